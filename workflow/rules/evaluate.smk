# Inference on each experiment's held-out cases, then their metrics.


rule infer:
    input:
        unpack(infer_inputs),
    output:
        f"{RESULTS}/predictions/{{exp}}/predictions.csv",
    log:
        f"{RESULTS}/logs/infer/{{exp}}.log",
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        device=PLAN.device,
    threads: PLAN.infer_resources.threads
    resources:
        gpu=PLAN.infer_resources.gpus,
        mem_mb=PLAN.infer_resources.mem_mb,
        runtime=PLAN.infer_resources.runtime,
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet infer --checkpoint {input.checkpoint} --cases {input.cases} --preprocessed {input.preprocessed}"
        " --split {input.split} --part held_out --out {params.out} --device {params.device} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics=f"{RESULTS}/evaluation/{{exp}}/metrics.csv",
        summary=f"{RESULTS}/evaluation/{{exp}}/summary.csv",
    log:
        f"{RESULTS}/logs/evaluate/{{exp}}.log",
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.predictions),
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet evaluate --cases {input.cases} --predictions {params.predictions} --split {input.split}"
        " --part held_out --experiment {wildcards.exp} --out {output.metrics} --summary {output.summary} > {log} 2>&1"

# One experiment file and one training job per experiment.


rule experiment:
    output:
        f"{RESULTS}/experiments/{{exp}}.json",
    log:
        f"{RESULTS}/logs/experiment/{{exp}}.log",
    params:
        # The resolved recipe: when it changes, only this experiment is rerun.
        spec=lambda wildcards: experiment_plan(wildcards).spec(),
    localrule: True
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet experiment --spec {params.spec:q} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(train_inputs),
    output:
        best=f"{RESULTS}/train/{{exp}}/best.pt",
        log=f"{RESULTS}/train/{{exp}}/log.csv",
        summary=f"{RESULTS}/train/{{exp}}/summary.json",
    log:
        f"{RESULTS}/logs/train/{{exp}}.log",
    params:
        launcher=lambda wildcards: PLAN.launcher(wildcards.exp),
        options=PLAN.train_options(),
        out=lambda wildcards, output: os.path.dirname(output.summary),
    threads: lambda wildcards: experiment_plan(wildcards).resources.threads
    resources:
        gpu=lambda wildcards: experiment_plan(wildcards).resources.gpus,
        mem_mb=lambda wildcards: experiment_plan(wildcards).resources.mem_mb,
        runtime=lambda wildcards: experiment_plan(wildcards).resources.runtime,
    conda:
        "../../envs/revunet.yaml"
    shell:
        "{params.launcher} train --experiment {input.experiment} --preprocessed {input.preprocessed}"
        " --split {input.split} --out {params.out} {params.options} > {log} 2>&1"

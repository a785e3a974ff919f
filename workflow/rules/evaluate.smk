# Inference on each experiment's test cases (never those that chose its checkpoint), then their metrics.


rule infer:
    input:
        unpack(infer_inputs),
        checkpoint=rules.train.output.best,
    output:
        PATHS["predictions"],
    log:
        log_file("infer", "{exp}"),
    conda:
        CONDA_ENV
    threads: PLAN.infer_resources.threads
    resources:
        gpu=PLAN.infer_resources.gpus,
        mem_mb=PLAN.infer_resources.mem_mb,
        runtime=PLAN.infer_resources.runtime,
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
        device=PLAN.device,
    shell:
        "revunet gpu-slots --gpus {resources.gpu} -- "
        "revunet infer --checkpoint {input.checkpoint} --cases {input.cases} --preprocessed {input.preprocessed}"
        " --split {input.split} --part test --out {params.out} --device {params.device} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
        predictions=rules.infer.output[0],
    output:
        metrics=PATHS["metrics"],
        summary=PATHS["summary_metrics"],
    log:
        log_file("evaluate", "{exp}"),
    conda:
        CONDA_ENV
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.predictions),
    shell:
        "revunet evaluate --cases {input.cases} --predictions {params.predictions} --split {input.split}"
        " --part test --experiment {wildcards.exp} --out {output.metrics} --summary {output.summary} > {log} 2>&1"


# The BraTS predictions again, after post-processing (config postprocessing): scores with and without it.
rule evaluate_postprocessed:
    input:
        unpack(evaluate_inputs),
        predictions=rules.infer.output[0],
    output:
        metrics=PATHS["metrics_postprocessed"],
        summary=PATHS["summary_postprocessed"],
    log:
        log_file("evaluate_postprocessed", "{exp}"),
    conda:
        CONDA_ENV
    params:
        predictions=lambda wildcards, input: os.path.dirname(input.predictions),
        options=PLAN.postprocess_options(),
    shell:
        "revunet evaluate --cases {input.cases} --predictions {params.predictions} --split {input.split}"
        " --part test --experiment {wildcards.exp} {params.options} --out {output.metrics}"
        " --summary {output.summary} > {log} 2>&1"


# The weights of an experiment's snapshot_epochs (e.g. Pendse et al.'s "after 50 epochs"),
# predicted and scored on the same test part as best.pt; the file is train's side product.
rule infer_snapshot:
    input:
        unpack(infer_inputs),
        trained=rules.train.output.summary,
    output:
        PATHS["predictions_snapshot"],
    log:
        log_file("infer_snapshot", "{exp}_{epoch}"),
    conda:
        CONDA_ENV
    threads: PLAN.infer_resources.threads
    resources:
        gpu=PLAN.infer_resources.gpus,
        mem_mb=PLAN.infer_resources.mem_mb,
        runtime=PLAN.infer_resources.runtime,
    params:
        checkpoint=lambda wildcards: PATHS["snapshot"].format(**wildcards),
        out=lambda wildcards, output: os.path.dirname(output[0]),
        device=PLAN.device,
    shell:
        "revunet gpu-slots --gpus {resources.gpu} -- "
        "revunet infer --checkpoint {params.checkpoint} --cases {input.cases} --preprocessed {input.preprocessed}"
        " --split {input.split} --part test --out {params.out} --device {params.device} > {log} 2>&1"


use rule evaluate as evaluate_snapshot with:
    input:
        unpack(evaluate_inputs),
        predictions=rules.infer_snapshot.output[0],
    output:
        metrics=PATHS["metrics_snapshot"],
        summary=PATHS["summary_snapshot"],
    log:
        log_file("evaluate_snapshot", "{exp}_{epoch}"),

# One experiment file and one training job per experiment.


rule experiment:
    output:
        PATHS["spec"],
    log:
        log_file("experiment", "{exp}"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        # The resolved recipe: when it changes, only this experiment is rerun.
        spec=lambda wildcards: experiment_plan(wildcards).spec(),
    shell:
        "revunet experiment --spec {params.spec:q} --out {output} > {log} 2>&1"


rule train:
    input:
        unpack(train_inputs),
        experiment=rules.experiment.output[0],
    output:
        best=PATHS["best"],
        log=PATHS["log"],
        summary=PATHS["summary"],
    log:
        log_file("train", "{exp}"),
    conda:
        CONDA_ENV
    threads: lambda wildcards: experiment_plan(wildcards).resources.threads
    resources:
        gpu=lambda wildcards: experiment_plan(wildcards).resources.gpus,
        mem_mb=lambda wildcards: experiment_plan(wildcards).resources.mem_mb,
        runtime=lambda wildcards: experiment_plan(wildcards).resources.runtime,
    params:
        launcher=lambda wildcards, input: PLAN.launcher(
            wildcards.exp, input.get("predicted")
        ),
        options=lambda wildcards, input: fit_options(input, PLAN.train_options()),
        out=lambda wildcards, output: os.path.dirname(output.summary),
        # one process per GPU: refused on fewer GPUs than that (--resources gpu=N caps a job's)
        processes=lambda wildcards: PLAN.launched_processes(wildcards.exp),
    shell:
        "revunet gpu-slots --gpus {resources.gpu} --processes {params.processes} -- "
        "{params.launcher} train --experiment {input.experiment} --preprocessed {input.preprocessed}"
        " --split {input.split} --out {params.out} {params.options} > {log} 2>&1"


# A smoke run's compile: true twin of each experiment (smoke_run.compiled): the same job
# with the blocks compiled, for seconds per step compiled beside eager.
use rule experiment as experiment_compiled with:
    output:
        PATHS["spec_compiled"],
    log:
        log_file("experiment_compiled", "{exp}"),
    params:
        spec=lambda wildcards: experiment_plan(wildcards).compiled_spec(),


use rule train as train_compiled with:
    input:
        unpack(train_inputs),
        experiment=rules.experiment_compiled.output[0],
    output:
        best=under("training_compiled", "{exp}", "best.pt"),
        log=PATHS["log_compiled"],
        summary=under("training_compiled", "{exp}", "summary.json"),
    log:
        log_file("train_compiled", "{exp}"),

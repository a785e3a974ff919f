# Training memory at the papers' sizes (fake tensors: any size on any machine).


rule memory_table:
    output:
        table=report(
            PATHS["memory_table"],
            caption="../report/memory_table.rst",
            category="Memory measurements",
            labels={"table": "{table}"},
        ),
        modules=report(
            PATHS["memory_modules"],
            caption="../report/memory_modules.rst",
            category="Memory measurements",
            labels={"table": "{table} by module"},
        ),
    log:
        log_file("memory_table", "{table}"),
    conda:
        CONDA_ENV
    shell:
        # --out F.csv also writes F_modules.csv (output.modules)
        "revunet memory --table {wildcards.table} --out {output.table} > {log} 2>&1"


rule capacity:
    output:
        report(
            PATHS["capacity"],
            caption="../report/capacity.rst",
            category="Memory measurements",
            labels={"table": "capacity"},
        ),
    log:
        log_file("capacity", "capacity"),
    conda:
        CONDA_ENV
    threads: PLAN.capacity_threads
    params:
        options=PLAN.capacity_arguments,
    shell:
        "revunet capacity {params.options} --jobs {threads} --out {output} > {log} 2>&1"


rule complexity:
    output:
        report(
            PATHS["complexity"],
            caption="../report/complexity.rst",
            category="Memory measurements",
            labels={"table": "complexity"},
        ),
    log:
        log_file("complexity", "complexity"),
    conda:
        CONDA_ENV
    params:
        options=PLAN.complexity_arguments,
    shell:
        "revunet complexity {params.options} --out {output} > {log} 2>&1"


# A smoke run's prediction of each experiment's training peak, for the smoke table beside
# what its training job measured (measure_memory: true).
rule memory_predicted:
    input:
        experiment=rules.experiment.output[0],
    output:
        PATHS["memory_predicted"],
    log:
        log_file("memory_predicted", "{exp}"),
    conda:
        CONDA_ENV
    params:
        options=lambda wildcards: PLAN.prediction_options(wildcards.exp),
    shell:
        "revunet memory --experiment {input.experiment} {params.options} --out {output} > {log} 2>&1"

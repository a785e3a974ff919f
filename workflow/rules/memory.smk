# Training memory at the papers' sizes (fake tensors: any size on any machine).


rule memory_table:
    output:
        report(
            f"{RESULTS}/memory/{{table,bruegger2019|invres_iseg|invres_brats|pendse2020}}.csv",
            caption="../report/memory_table.rst",
            category="Memory measurements",
            labels={"table": "{table}"},
        ),
    log:
        f"{RESULTS}/logs/memory_table/{{table}}.log",
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet memory --table {wildcards.table} --out {output} > {log} 2>&1"


rule capacity:
    output:
        report(
            f"{RESULTS}/memory/capacity.csv",
            caption="../report/capacity.rst",
            category="Memory measurements",
            labels={"table": "capacity"},
        ),
    log:
        f"{RESULTS}/logs/capacity/capacity.log",
    params:
        options=PLAN.capacity_arguments,
    threads: 2
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet capacity {params.options} --jobs {threads} --out {output} > {log} 2>&1"


rule complexity:
    output:
        report(
            f"{RESULTS}/memory/complexity.csv",
            caption="../report/complexity.rst",
            category="Memory measurements",
            labels={"table": "complexity"},
        ),
    log:
        f"{RESULTS}/logs/complexity/complexity.log",
    params:
        options=PLAN.complexity_arguments,
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet complexity {params.options} --out {output} > {log} 2>&1"

# Data: generate, download or find each dataset's cases, preprocess them all, split them.


rule synthetic_dataset:
    output:
        directory(PATHS["synthetic"]),
    log:
        log_file("synthetic_dataset", "{dataset}_{folder}"),
    conda:
        CONDA_ENV
    params:
        options=lambda wildcards: dataset_plan(wildcards).synth_arguments(),
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "revunet synth {params.options} --out {params.out} > {log} 2>&1"


rule decathlon_download:
    output:
        directory(PATHS["decathlon"]),
    log:
        log_file("decathlon_download", "{dataset}"),
    conda:
        CONDA_ENV
    params:
        out=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "revunet fetch --out {params.out} > {log} 2>&1"


rule cases:
    input:
        cases_input,
    output:
        table=PATHS["cases"],
        excluded=PATHS["excluded_cases"],
    log:
        log_file("cases", "{dataset}"),
    conda:
        CONDA_ENV
    params:
        folder=lambda wildcards: raw_folder(wildcards.dataset),
        layout=lambda wildcards: dataset_plan(wildcards).layout,
        exclude=lambda wildcards: dataset_plan(wildcards).cases_arguments(),
    shell:
        "revunet cases {params.folder:q} --layout {params.layout} {params.exclude} --out {output.table}"
        " --excluded-list {output.excluded} > {log} 2>&1"


# Cases are preprocessed one by one into the store, which is no job's output: when a case is
# broken the job fails (Snakemake deletes its output folder) but the good cases stay in the
# store, and the rerun only links them into the output folder again.
rule preprocess:
    input:
        rules.cases.output.table,
    output:
        directory(PATHS["preprocessed"]),
    log:
        log_file("preprocess", "{dataset}"),
    conda:
        CONDA_ENV
    params:
        shape=lambda wildcards: dataset_plan(wildcards).shape_argument(),
        store=lambda wildcards: PATHS["preprocess_store"].format(
            dataset=wildcards.dataset
        ),
        exclude_key=lambda wildcards: dataset_plan(wildcards).exclude_key,
    shell:
        "revunet preprocess --cases {input} --all --shape {params.shape} --store {params.store} --out {output}"
        " --exclude-key {params.exclude_key} > {log} 2>&1"


rule split:
    input:
        rules.cases.output.table,
    output:
        PATHS["split"],
    log:
        log_file("split", "{dataset}_{split}"),
    conda:
        CONDA_ENV
    params:
        options=lambda wildcards: split_plan(wildcards).arguments(),
    shell:
        "revunet split --cases {input} {params.options} --out {output} > {log} 2>&1"

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
        PATHS["cases"],
    log:
        log_file("cases", "{dataset}"),
    conda:
        CONDA_ENV
    params:
        folder=lambda wildcards: raw_folder(wildcards.dataset),
        layout=lambda wildcards: dataset_plan(wildcards).layout,
    shell:
        "revunet cases {params.folder:q} --layout {params.layout} --out {output} > {log} 2>&1"


rule preprocess:
    input:
        rules.cases.output,
    output:
        directory(PATHS["preprocessed"]),
    log:
        log_file("preprocess", "{dataset}"),
    conda:
        CONDA_ENV
    params:
        shape=lambda wildcards: dataset_plan(wildcards).shape_argument(),
    shell:
        "revunet preprocess --cases {input} --all --shape {params.shape} --out {output} > {log} 2>&1"


rule split:
    input:
        rules.cases.output,
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

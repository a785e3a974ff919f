# Data: generate, download or find each dataset's cases, preprocess them all, split them.


rule synthetic_dataset:
    output:
        directory(f"{RESULTS}/data/{{dataset}}/raw/{{folder,{SYNTHETIC_FOLDER_PATTERN}}}"),
    log:
        f"{RESULTS}/logs/synthetic_dataset/{{dataset}}_{{folder}}.log",
    params:
        options=lambda wildcards: dataset_plan(wildcards).synth_arguments(),
        out=lambda wildcards: f"{RESULTS}/data/{wildcards.dataset}/raw",
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet synth {params.options} --out {params.out} > {log} 2>&1"


rule decathlon_download:
    output:
        directory(f"{RESULTS}/data/{{dataset}}/raw/{DECATHLON_FOLDER}"),
    log:
        f"{RESULTS}/logs/decathlon_download/{{dataset}}.log",
    params:
        out=lambda wildcards: f"{RESULTS}/data/{wildcards.dataset}/raw",
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet fetch --out {params.out} > {log} 2>&1"


rule cases:
    input:
        cases_input,
    output:
        f"{RESULTS}/data/{{dataset}}/cases.csv",
    log:
        f"{RESULTS}/logs/cases/{{dataset}}.log",
    params:
        folder=lambda wildcards: raw_folder(wildcards.dataset),
        layout=lambda wildcards: dataset_plan(wildcards).layout,
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet cases {params.folder:q} --layout {params.layout} --out {output} > {log} 2>&1"


rule preprocess:
    input:
        f"{RESULTS}/data/{{dataset}}/cases.csv",
    output:
        directory(f"{RESULTS}/data/{{dataset}}/preprocessed"),
    log:
        f"{RESULTS}/logs/preprocess/{{dataset}}.log",
    params:
        shape=lambda wildcards: dataset_plan(wildcards).shape_argument(),
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet preprocess --cases {input} --all --shape {params.shape} --out {output} > {log} 2>&1"


rule split:
    input:
        f"{RESULTS}/data/{{dataset}}/cases.csv",
    output:
        f"{RESULTS}/data/{{dataset}}/splits/{{split}}.json",
    log:
        f"{RESULTS}/logs/split/{{dataset}}_{{split}}.log",
    params:
        options=lambda wildcards: dataset_plan(wildcards).splits[wildcards.split].arguments(),
    conda:
        "../../envs/revunet.yaml"
    shell:
        "revunet split --cases {input} {params.options} --out {output} > {log} 2>&1"

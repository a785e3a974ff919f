# Tables and figures (paper vs reproduced), the config the run used, and the HTML report.


rule tables:
    input:
        **report_inputs(),
    output:
        # the report shows a wide table's views, each with the caption of its Markdown
        *[
            report(
                csv,
                # written by the job; a caption path is relative to this file unless absolute
                caption=os.path.abspath(caption),
                category="Tables",
                labels={"table": name, "view": view or "all columns"},
            )
            for name, view, csv, caption in table_shown()
        ],
        # the full CSVs of the tables with views
        *[
            PATHS["table"].format(name=name, extension="csv")
            for name in table_names()
            if table_views(name)
        ],
        *table_outputs("md"),
        *table_outputs("rst"),
        index=PATHS["tables_index"],
    log:
        log_file("tables", "tables"),
    conda:
        CONDA_ENV
    params:
        folders=result_folders(),
        out=lambda wildcards, output: os.path.dirname(output.index),
        preset=PLAN.preset,
        smoke=smoke_table_options(),
    shell:
        "revunet tables --experiments {params.folders[experiments]} --evaluations {params.folders[evaluations]}"
        " --training {params.folders[training]} --memory {params.folders[memory]}"
        " --cases-dir {params.folders[data]} --preset {params.preset} {params.smoke} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        **report_inputs(),
        predictions=experiment_outputs("predictions"),
    output:
        *[
            report(
                path,
                caption=f"../report/{figure_caption(name)}.rst",
                category="Figures",
                labels={"figure": name},
            )
            for name, path in zip(figure_names(), figure_outputs("png"))
        ],
        *figure_outputs("pdf"),
        index=PATHS["figures_index"],
    log:
        log_file("figures", "figures"),
    conda:
        CONDA_ENV
    params:
        folders=result_folders(),
        out=lambda wildcards, output: os.path.dirname(output.index),
        smoke=PLAN.report_options(),
    shell:
        "revunet figures --experiments {params.folders[experiments]} --training {params.folders[training]}"
        " --evaluations {params.folders[evaluations]} --memory {params.folders[memory]}"
        " --predictions {params.folders[predictions]} --cases-dir {params.folders[data]}"
        " {params.smoke} --out {params.out} > {log} 2>&1"


rule run_config:
    output:
        PATHS["run_config"],
    log:
        log_file("run_config", "run_config"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        # The validated config with its defaults: what this run used.
        config=lambda wildcards: json.dumps(config, sort_keys=True),
    shell:
        "revunet experiment --config {params.config:q} --out {output} > {log} 2>&1"


rule report:
    input:
        config=rules.run_config.output[0],
        tables=table_outputs("csv"),
        captions=table_outputs("rst"),
        figures=figure_outputs("png"),
    output:
        PATHS["report"],
    log:
        log_file("report", "report"),
    localrule: True
    conda:
        CONDA_ENV
    params:
        python=PYTHON,
        snakefile=workflow.main_snakefile,
    shell:
        # Snakemake's own report of this workflow, with the config this run used.
        "{params.python} -m snakemake --snakefile {params.snakefile:q} --nolock --replace-workflow-config"
        " --configfile {input.config} --report {output} > {log} 2>&1"

"""Replication of three papers on reversible 3-D U-Nets: data -> training -> evaluation ->
memory -> tables, figures and the HTML report. Every rule calls one `revunet` command; the
plan (experiments, datasets, resources) comes from config.yaml through
revunet.experiments.plan. See README.md and docs/getting-started.md for how to run it.
"""

import os
import sys

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from revunet.experiments.config_files import (
    ConfigError,
    check_config,
    read_workflow_config,
)

min_version("8.20")


envvars:
    "PATH",


# Jobs call `revunet` by name: put the folder of the Python running Snakemake first on PATH,
# so `.venv/bin/snakemake` finds the package installed beside it without an activated
# environment (a conda job environment, when used, still comes first inside its job).
search_path = os.environ["PATH"]
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), search_path])


DEFAULT_CONFIG = "config.yaml"


configfile: DEFAULT_CONFIG


# Snakemake read the config files with PyYAML (YAML 1.1: `lr: 1e-4` is a string there) and
# --config's nested values as strings: read them again as every revunet command reads its
# documents, merged in Snakemake's order by our rule (a split's fraction replaces its counts),
# then check them against the schema (defaults filled in), each problem in one line.
config_settings = workflow.config_settings
try:
    workflow_config = check_config(
        read_workflow_config(
            DEFAULT_CONFIG,
            config_settings.configfiles,
            config_settings.config,
            config_settings.replace_workflow_config,
        ),
        os.path.join(workflow.basedir, "workflow", "schemas", "config.schema.yaml"),
    )
except ConfigError as error:
    raise WorkflowError(str(error)) from None
config.clear()
config.update(workflow_config)


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/memory.smk"
include: "workflow/rules/report.smk"


# Every file of every experiment is a target: deleting any of them reruns its job and what
# depends on it (Snakemake leaves a missing intermediate file alone otherwise).
rule all:
    default_target: True
    input:
        experiment_outputs("spec"),
        experiment_outputs("best"),
        experiment_outputs("log"),
        experiment_outputs("summary"),
        experiment_outputs("predictions"),
        experiment_outputs("metrics"),
        experiment_outputs("summary_metrics"),
        table_outputs("csv"),
        table_outputs("md"),
        figure_outputs("png"),
        figure_outputs("pdf"),
        rules.report.output,

# Shared wiring: the plan of the run (from config.yaml), result paths, and input functions.
# Every decision lives in revunet.experiments.plan (tested); this file only looks things up.

import json
import sys

from snakemake.exceptions import WorkflowError

from revunet.catalog import DECATHLON_FOLDER, REPORT_FIGURES, REPORT_TABLES, SYNTHETIC_FOLDERS
from revunet.experiments.plan import ConfigError, plan_workflow

try:
    PLAN = plan_workflow(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

RESULTS = "results"
PYTHON = sys.executable
SYNTHETIC_FOLDER_PATTERN = "|".join(sorted(SYNTHETIC_FOLDERS.values()))


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    split="[A-Za-z0-9_-]+",
    exp="[A-Za-z0-9_-]+",
    table="[A-Za-z0-9_-]+",


# ---------------------------------------------------------------- paths


def dataset_plan(wildcards):
    return PLAN.datasets[wildcards.dataset]


def experiment_plan(wildcards):
    return PLAN.experiments[wildcards.exp]


def raw_folder(dataset):
    """Where a dataset's case folder lies: generated, downloaded, or the user's own."""
    plan = PLAN.datasets[dataset]
    if plan.source == "synthetic":
        return f"{RESULTS}/data/{dataset}/raw/{plan.synthetic_folder}"
    if plan.source == "decathlon":
        return f"{RESULTS}/data/{dataset}/raw/{DECATHLON_FOLDER}"
    return plan.path


def cases_table(dataset):
    return f"{RESULTS}/data/{dataset}/cases.csv"


def preprocessed(dataset):
    return f"{RESULTS}/data/{dataset}/preprocessed"


def split_file(dataset, split):
    return f"{RESULTS}/data/{dataset}/splits/{split}.json"


# ---------------------------------------------------------------- input functions


def cases_input(wildcards):
    """A generated or downloaded folder is a job's output; a local folder is only read."""
    if PLAN.datasets[wildcards.dataset].source == "local":
        return []
    return [raw_folder(wildcards.dataset)]


def train_inputs(wildcards):
    plan = experiment_plan(wildcards)
    return {
        "experiment": f"{RESULTS}/experiments/{wildcards.exp}.json",
        "preprocessed": preprocessed(plan.dataset),
        "split": split_file(plan.dataset, plan.split),
    }


def infer_inputs(wildcards):
    plan = experiment_plan(wildcards)
    return {
        "checkpoint": f"{RESULTS}/train/{wildcards.exp}/best.pt",
        "cases": cases_table(plan.dataset),
        "preprocessed": preprocessed(plan.dataset),
        "split": split_file(plan.dataset, plan.split),
    }


def evaluate_inputs(wildcards):
    plan = experiment_plan(wildcards)
    return {
        "predictions": f"{RESULTS}/predictions/{wildcards.exp}/predictions.csv",
        "cases": cases_table(plan.dataset),
        "split": split_file(plan.dataset, plan.split),
    }


# ---------------------------------------------------------------- targets


def experiment_outputs(kind):
    names = PLAN.experiment_names()
    paths = {
        "spec": f"{RESULTS}/experiments/{{exp}}.json",
        "best": f"{RESULTS}/train/{{exp}}/best.pt",
        "summary": f"{RESULTS}/train/{{exp}}/summary.json",
        "log": f"{RESULTS}/train/{{exp}}/log.csv",
        "predictions": f"{RESULTS}/predictions/{{exp}}/predictions.csv",
        "metrics": f"{RESULTS}/evaluation/{{exp}}/metrics.csv",
        "summary_metrics": f"{RESULTS}/evaluation/{{exp}}/summary.csv",
    }
    return expand(paths[kind], exp=names)


def memory_outputs():
    tables = expand(f"{RESULTS}/memory/{{table}}.csv", table=PLAN.memory_tables)
    return tables + [f"{RESULTS}/memory/capacity.csv", f"{RESULTS}/memory/complexity.csv"]


def table_outputs(extension):
    return expand(f"{RESULTS}/tables/{{name}}.{extension}", name=REPORT_TABLES)


def figure_names():
    """The figures `revunet figures` draws: the fixed ones and one example per dataset."""
    return [*REPORT_FIGURES, *(f"example_segmentation_{dataset}" for dataset in PLAN.datasets)]


def figure_caption(name):
    """Caption file (workflow/report/<caption>.rst) of a figure: one for all example figures."""
    return "figure_example_segmentation" if name.startswith("example_segmentation_") else f"figure_{name}"


def figure_outputs(extension):
    return expand(f"{RESULTS}/figures/{{name}}.{extension}", name=figure_names())


def report_inputs():
    return {
        "experiments": experiment_outputs("spec"),
        "training": experiment_outputs("summary") + experiment_outputs("log"),
        "evaluations": experiment_outputs("metrics"),
        "memory": memory_outputs(),
        "cases": [cases_table(dataset) for dataset in PLAN.datasets],
    }


def result_folders():
    """The folders `revunet tables` and `revunet figures` read."""
    return {
        "experiments": f"{RESULTS}/experiments",
        "training": f"{RESULTS}/train",
        "evaluations": f"{RESULTS}/evaluation",
        "memory": f"{RESULTS}/memory",
        "predictions": f"{RESULTS}/predictions",
        "data": f"{RESULTS}/data",
    }

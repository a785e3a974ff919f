# Shared wiring: the plan of the run (from config.yaml), the result paths, input functions.
# Every decision lives in revunet.experiments.plan (tested); this file only looks things up.

import json
import sys

from snakemake.exceptions import WorkflowError

from revunet.catalog import (
    DECATHLON_FOLDER,
    MEMORY_TABLES,
    REPORT_FIGURES,
    REPORT_TABLE_VIEWS,
    REPORT_TABLES,
    SMOKE_TABLE,
    SYNTHETIC_LAYOUTS,
)
from revunet.experiments.plan import ConfigError, plan_workflow

try:
    PLAN = plan_workflow(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

PYTHON = sys.executable
# Every rule's environment with `--sdm conda` (the path is relative to the rule files).
CONDA_ENV = "../../envs/revunet.yaml"
# results/, or results/smoke/ for a smoke run (config smoke: true)
RESULTS = PLAN.results
# Every result folder; REPORT_READS names those `revunet tables` and `revunet figures` read.
FOLDERS = {
    "data": f"{RESULTS}/data",
    "experiments": f"{RESULTS}/experiments",
    # the smoke run's compile: true twins (experiments and training runs)
    "experiments_compiled": f"{RESULTS}/experiments_compiled",
    "training_compiled": f"{RESULTS}/train_compiled",
    # the smoke run's predicted training peaks (revunet memory --experiment)
    "memory_predicted": f"{RESULTS}/memory/predicted",
    "training": f"{RESULTS}/train",
    "predictions": f"{RESULTS}/predictions",
    "evaluations": f"{RESULTS}/evaluation",
    "memory": f"{RESULTS}/memory",
    "tables": f"{RESULTS}/tables",
    "figures": f"{RESULTS}/figures",
    "logs": f"{RESULTS}/logs",
}
REPORT_READS = (
    "data",
    "experiments",
    "training",
    "predictions",
    "evaluations",
    "memory",
)


def under(folder, *parts):
    """A path in one of the result folders."""
    return "/".join([FOLDERS[folder], *parts])


# Every file the workflow writes, once: rules name their outputs from here, and input
# functions fill in the wildcards of another rule's output.
PATHS = {
    "synthetic": under("data", "{dataset}", "raw", "{folder}"),
    "decathlon": under("data", "{dataset}", "raw", DECATHLON_FOLDER),
    "cases": under("data", "{dataset}", "cases.csv"),
    "excluded_cases": under("data", "{dataset}", "excluded_cases.csv"),
    "preprocessed": under("data", "{dataset}", "preprocessed"),
    # not a job's output: the per-case files survive a failed preprocess job (see data.smk)
    "preprocess_store": under("data", "{dataset}", "preprocess_store"),
    "split": under("data", "{dataset}", "splits", "{split}.json"),
    "spec": under("experiments", "{exp}.json"),
    "spec_compiled": under("experiments_compiled", "{exp}.json"),
    "log_compiled": under("training_compiled", "{exp}", "log.csv"),
    "memory_predicted": under("memory_predicted", "{exp}.json"),
    "best": under("training", "{exp}", "best.pt"),
    "log": under("training", "{exp}", "log.csv"),
    "summary": under("training", "{exp}", "summary.json"),
    "predictions": under("predictions", "{exp}", "predictions.csv"),
    # an experiment's snapshot_epochs: the weights train keeps, their predictions and scores
    "snapshot": under("training", "{exp}", "epoch_{epoch}.pt"),
    "predictions_snapshot": under(
        "predictions", "{exp}", "epoch_{epoch}", "predictions.csv"
    ),
    "metrics_snapshot": under("evaluations", "{exp}", "epoch_{epoch}", "metrics.csv"),
    "summary_snapshot": under("evaluations", "{exp}", "epoch_{epoch}", "summary.csv"),
    "metrics": under("evaluations", "{exp}", "metrics.csv"),
    "summary_metrics": under("evaluations", "{exp}", "summary.csv"),
    "metrics_postprocessed": under(
        "evaluations", "{exp}", "postprocessed", "metrics.csv"
    ),
    "summary_postprocessed": under(
        "evaluations", "{exp}", "postprocessed", "summary.csv"
    ),
    "memory_table": under("memory", "{table}.csv"),
    "memory_modules": under("memory", "{table}_modules.csv"),
    "capacity": under("memory", "capacity.csv"),
    "complexity": under("memory", "complexity.csv"),
    "table": under("tables", "{name}.{extension}"),
    "tables_index": under("tables", "index.csv"),
    "figure": under("figures", "{name}.{extension}"),
    "figures_index": under("figures", "index.csv"),
    "run_config": f"{RESULTS}/config.yaml",
    "report": f"{RESULTS}/report.html",
}


def log_file(rule, stem):
    """Where rule ``rule`` logs the job named ``stem`` (a pattern of its wildcards)."""
    return under("logs", rule, f"{stem}.log")


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    split="[A-Za-z0-9_-]+",
    exp="[A-Za-z0-9_-]+",
    epoch="[0-9]{4}",
    folder="|".join(sorted({folder for _, folder in SYNTHETIC_LAYOUTS.values()})),
    table="|".join(MEMORY_TABLES),


# ---------------------------------------------------------------- input functions


def dataset_plan(wildcards):
    return PLAN.datasets[wildcards.dataset]


def split_plan(wildcards):
    return PLAN.datasets[wildcards.dataset].splits[wildcards.split]


def experiment_plan(wildcards):
    return PLAN.experiments[wildcards.exp]


def raw_folder(dataset):
    """Where a dataset's case folder lies: generated, downloaded, or the user's own."""
    plan = PLAN.datasets[dataset]
    if plan.source == "synthetic":
        return PATHS["synthetic"].format(dataset=dataset, folder=plan.synthetic_folder)
    if plan.source == "decathlon":
        return PATHS["decathlon"].format(dataset=dataset)
    return plan.path


def cases_input(wildcards):
    """A generated or downloaded folder is a job's output; a local folder is only read."""
    if PLAN.datasets[wildcards.dataset].source == "local":
        return []
    return [raw_folder(wildcards.dataset)]


def dataset_inputs(wildcards, *kinds):
    """The data files (``cases``, ``preprocessed``, ``split``) an experiment's job reads."""
    plan = experiment_plan(wildcards)
    return {
        kind: PATHS[kind].format(dataset=plan.dataset, split=plan.split)
        for kind in kinds
    }


def train_inputs(wildcards):
    """The data; in a smoke run also the predicted peak, so the job starts only where it fits."""
    inputs = dataset_inputs(wildcards, "preprocessed", "split")
    if PLAN.smoke:
        inputs["predicted"] = PATHS["memory_predicted"].format(exp=wildcards.exp)
    return inputs


def fit_options(input, options):
    """`revunet train` options, with --predicted where the job has a predicted peak (smoke run)."""
    predicted = input.get("predicted")
    return f"{options} --predicted {predicted}" if predicted else options


def infer_inputs(wildcards):
    return dataset_inputs(wildcards, "cases", "preprocessed", "split")


def evaluate_inputs(wildcards):
    return dataset_inputs(wildcards, "cases", "split")


# ---------------------------------------------------------------- targets


def experiment_outputs(kind):
    """File ``kind`` (a key of PATHS with an ``{exp}`` wildcard) of every experiment."""
    return expand(PATHS[kind], exp=PLAN.experiment_names())


def snapshot_outputs(kind):
    """File ``kind`` (a PATHS key with ``{exp}`` and ``{epoch}``) of every reported snapshot."""
    return [PATHS[kind].format(exp=exp, epoch=epoch) for exp, epoch in PLAN.snapshots()]


def memory_outputs():
    tables = expand(PATHS["memory_table"], table=PLAN.memory_tables)
    tables += expand(PATHS["memory_modules"], table=PLAN.memory_tables)
    return tables + [PATHS["capacity"], PATHS["complexity"]]


def table_names():
    """The tables `revunet tables` writes: a smoke run's own table first."""
    return [SMOKE_TABLE, *REPORT_TABLES] if PLAN.smoke else list(REPORT_TABLES)


def table_views(name):
    """The views of table ``name``; `revunet tables` writes each as NAME.VIEW.csv."""
    return REPORT_TABLE_VIEWS.get(name, ())


def table_shown():
    """(table, view, CSV, caption) of each table file the HTML report shows: a table's views
    where it has some, else its full CSV; `revunet tables` writes each caption beside it.
    """
    shown = []
    for name in table_names():
        for view in table_views(name) or ("",):
            stem = f"{name}.{view}" if view else name
            csv, caption = (
                PATHS["table"].format(name=stem, extension=extension)
                for extension in ("csv", "rst")
            )
            shown.append((name, view, csv, caption))
    return shown


def table_outputs(extension):
    """Every file of ``extension`` that `revunet tables` writes: csv, every table's full CSV and
    then each view's; md, one per table; rst, the caption of each CSV the report shows.
    """
    if extension == "rst":
        return [caption for _, _, _, caption in table_shown()]
    files = expand(PATHS["table"], name=table_names(), extension=extension)
    if extension == "csv":
        files += [csv for _, view, csv, _ in table_shown() if view]
    return files


def figure_names():
    """The figures `revunet figures` draws: the fixed ones and one example per dataset."""
    return [
        *REPORT_FIGURES,
        *(f"example_segmentation_{dataset}" for dataset in PLAN.datasets),
    ]


def figure_caption(name):
    """Caption file (workflow/report/<caption>.rst) of a figure: one for all example figures."""
    if name.startswith("example_segmentation_"):
        return "figure_example_segmentation"
    if name.startswith("memory_modules_"):
        return "figure_memory_modules"
    return f"figure_{name}"


def figure_outputs(extension):
    return expand(PATHS["figure"], name=figure_names(), extension=extension)


def report_inputs():
    return {
        "experiments": experiment_outputs("spec"),
        "training": experiment_outputs("summary") + experiment_outputs("log"),
        "evaluations": experiment_outputs("metrics")
        + snapshot_outputs("metrics_snapshot"),
        "postprocessed": expand(
            PATHS["metrics_postprocessed"], exp=PLAN.postprocessed_experiments()
        ),
        "memory": memory_outputs(),
        "cases": [PATHS["cases"].format(dataset=dataset) for dataset in PLAN.datasets],
        "compiled": expand(PATHS["log_compiled"], exp=PLAN.compiled_experiments()),
        "predicted": expand(
            PATHS["memory_predicted"], exp=PLAN.experiment_names() if PLAN.smoke else []
        ),
    }


def result_folders():
    """The folders `revunet tables` and `revunet figures` read."""
    return {name: FOLDERS[name] for name in REPORT_READS}


def smoke_table_options():
    """`revunet tables` options of a smoke run: the mark, the compiled twins' runs."""
    if not PLAN.smoke:
        return ""
    return (
        f"--smoke --compiled-training {FOLDERS['training_compiled']}"
        f" --predicted-memory {FOLDERS['memory_predicted']}"
    )

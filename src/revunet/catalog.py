"""The project's names, in one torch-free place that every layer may import.

Snakemake imports the workflow plan each time it parses the Snakefile, and `revunet --help`
must stay fast, so nothing here imports torch, numpy or pandas. Modules that implement a
name (a task in :mod:`revunet.tasks`, a memory table in :mod:`revunet.memory.paper_tables`,
a table builder in :mod:`revunet.report.tables`) take the name from here; tests check that
each list and its implementations agree.
"""

from __future__ import annotations

# --------------------------------------------------------------------------- tasks

TASK_NAMES = ("brats", "iseg")
# The modality files of a case, in channel order.
TASK_MODALITIES: dict[str, tuple[str, ...]] = {"brats": ("t1", "t1ce", "t2", "flair"), "iseg": ("t1", "t2")}
# The scored regions: BraTS's nested tumour regions, iSeg's tissue classes (background not scored).
TASK_REGIONS: dict[str, tuple[str, ...]] = {"brats": ("WT", "TC", "ET"), "iseg": ("CSF", "GM", "WM")}
# How the network's logits become probabilities: independent regions or exclusive classes.
OUTPUTS = ("sigmoid", "softmax")
TASK_OUTPUTS: dict[str, str] = {"brats": "sigmoid", "iseg": "softmax"}

# --------------------------------------------------------------------------- recipes

# What an experiment may name (checked when the workflow starts, before any job runs): the
# architectures of :mod:`revunet.models.registry`, the loss presets of
# :data:`revunet.training.losses.LOSSES`, the presets of :mod:`revunet.data.augment`.
MODEL_NAMES = ("nonewnet", "partially_reversible", "unet3d", "invres_partial", "invres_full")
LOSS_NAMES = ("bruegger2019", "invres2020", "pendse2020", "dice_bce")
AUGMENTATION_PRESETS = ("none", "bruegger2019", "pendse2020", "invres2020")
OPTIMIZERS = ("adam", "adamw", "sgd")

# --------------------------------------------------------------------------- splits

# Which cases of a split a command works on; ``all`` means every case of the split.
SPLIT_PARTS = ("test", "validation", "train", "all")

# --------------------------------------------------------------------------- data folders

# The folders `revunet synth` writes under a dataset's raw folder, one per task.
SYNTHETIC_FOLDERS: dict[str, str] = {"brats": "MICCAI_BraTS2020_TrainingData", "iseg": "iSeg-2019-Training"}
# The on-disk layouts `revunet synth --layout` can write (names of revunet.data.layouts):
# layout -> (task, folder). Each task's default layout is the one of SYNTHETIC_FOLDERS.
SYNTHETIC_LAYOUTS: dict[str, tuple[str, str]] = {
    "brats2020": ("brats", "MICCAI_BraTS2020_TrainingData"),
    "brats2018": ("brats", "MICCAI_BraTS_2018_Data_Training"),
    "iseg": ("iseg", "iSeg-2019-Training"),
}
DECATHLON_FOLDER = "Task01_BrainTumour"

# --------------------------------------------------------------------------- memory and report

# The papers' memory tables that `revunet memory --table NAME` measures.
MEMORY_TABLES = ("bruegger2019", "invres_iseg", "invres_brats", "pendse2020")
# What `revunet tables` writes (one CSV and one Markdown file each, a CSV per view besides).
REPORT_TABLES = (
    "bruegger2019",
    "invres_iseg",
    "invres_brats",
    "pendse2020_memory",
    "pendse2020_dice",
    "complexity",
    "capacity",
    "postprocessing",
)
# The smoke run's own table (revunet tables --smoke), besides REPORT_TABLES.
SMOKE_TABLE = "smoke"
# The views of the tables too wide to read whole (at most 10 columns each, the table's identifying
# columns in every one): each table's Markdown shows them one after the other, and `revunet tables`
# writes one CSV per view besides the full one, NAME.VIEW.csv, which Snakemake's report shows.
REPORT_TABLE_VIEWS: dict[str, tuple[str, ...]] = {
    "bruegger2019": ("memory", "segmentation", "distances", "lesion_wise"),
    "invres_iseg": ("memory", "segmentation", "distances"),
    "invres_brats": ("memory", "segmentation", "distances", "lesion_wise"),
    "pendse2020_dice": ("early", "converged"),
    "capacity": ("claims", "searches", "floor"),
    "postprocessing": ("whole_volume", "lesion_wise"),
    SMOKE_TABLE: ("run", "speed", "memory"),
}
# One memory_modules_<table> figure per memory table (each row's peak by owning module).
MODULES_FIGURE = "memory_modules"
# What `revunet figures` writes, besides one example_segmentation_<dataset> figure per dataset.
REPORT_FIGURES = (
    "training_curves",
    "dice_distribution",
    "hd95_distribution",
    "memory_vs_paper",
    "memory_vs_depth",
    *(f"{MODULES_FIGURE}_{table}" for table in MEMORY_TABLES),
)
EXAMPLE_FIGURE = "example_segmentation"

"""From the workflow's config.yaml to concrete experiments, datasets and job resources.

The Snakefile reads ``config.yaml`` and any ``--configfile`` (see
:mod:`revunet.experiments.config_files`), validates the result against its schema and hands it to
:func:`plan_workflow`, which applies the scale preset (``demo`` or ``paper``) and returns a
:class:`WorkflowPlan`: one :class:`revunet.experiments.recipe.Experiment` per selected experiment
with the dataset, split and resources of its training job, and the datasets those
experiments need. The rules only read this plan, so every decision lives here and is tested.

How an experiment's fields are merged (later wins, mappings merge key by key, anything else
is replaced): ``recipes[recipe]`` → the experiment's own keys → ``presets[preset].experiment``
→ the experiment's ``demo:``/``paper:`` block. Importing this module must stay cheap (no
torch): Snakemake imports it every time it parses the workflow.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from revunet.catalog import MEMORY_TABLES
from revunet.experiments.config_files import ConfigError, deep_merge
from revunet.experiments.config_files import expect_choice as _choice
from revunet.experiments.config_files import expect_mapping as _mapping
from revunet.experiments.datasets import DatasetPlan, plan_dataset
from revunet.experiments.protocol import check_canvas, check_selection, check_shared_folders, protocol_row
from revunet.experiments.recipe import Experiment
from revunet.experiments.smoke import SMOKE_RESULTS, SmokeSettings, compiled_twin, smoke_dataset, smoke_experiment

PRESETS = ("demo", "paper")
WORKFLOW_KEYS = ("recipe", "dataset", "split", "resources")
# model_params.vae_input_size may say this instead of a size: the size the model trains on.
TRAINING_INPUT = "training_input"
DEFAULT_RESOURCES = {"threads": 1, "gpus": 1, "mem_mb": 4000, "runtime": 60}


@dataclass(frozen=True)
class Resources:
    """What one job asks the scheduler for (``runtime`` in minutes)."""

    threads: int = 1
    gpus: int = 1
    mem_mb: int = 4000
    runtime: int = 60


@dataclass(frozen=True)
class ExperimentPlan:
    """One training job: the experiment, the data it uses and what the job asks for."""

    experiment: Experiment
    dataset: str
    split: str
    resources: Resources

    @property
    def name(self) -> str:
        return self.experiment.name

    def spec(self) -> str:
        """The experiment as canonical JSON (what `revunet experiment --spec` takes)."""
        return json.dumps(self.experiment.to_dict(), sort_keys=True)

    def compiled_spec(self) -> str:
        """The smoke run's ``compile: true`` twin of the experiment, as canonical JSON."""
        return json.dumps(compiled_twin(self.experiment).to_dict(), sort_keys=True)


@dataclass(frozen=True)
class WorkflowPlan:
    """Everything the rules need to know, at the chosen preset."""

    preset: str
    device: str
    datasets: dict[str, DatasetPlan]
    experiments: dict[str, ExperimentPlan]
    infer_resources: Resources
    memory_tables: tuple[str, ...]
    capacity_arguments: str
    complexity_arguments: str = ""
    # `revunet capacity --jobs`: its trials run in this many processes (Snakemake lowers it to --cores).
    capacity_threads: int = 2
    train_time_limit: str = "auto"
    launch_single: str = "revunet"
    launch_distributed: str = "torchrun --standalone --nproc_per_node={gpus} -m revunet.cli"
    # `revunet evaluate --postprocess` thresholds (mm³): config postprocessing.
    et_min_mm3: float = 500.0
    min_component_mm3: float = 0.0
    evaluate_postprocessed: bool = True
    # The smoke run's settings (config smoke: true), None for a real run.
    smoke: SmokeSettings | None = None

    @property
    def results(self) -> str:
        """The folder every output goes to: a smoke run's never mix with a real run's."""
        return SMOKE_RESULTS if self.smoke is not None else "results"

    def launcher(self, name: str, predicted: str | None = None) -> str:
        """The command that runs ``revunet`` for experiment ``name``'s training job.

        In a smoke run, a multi-GPU job starts as many processes as it has GPUs, or
        ``smoke_run.processes`` (gloo on CPU) where there is none (``revunet processes``), lowered
        to what the node's memory holds given the job's ``predicted`` peak (a JSON file)."""
        gpus = self.experiments[name].resources.gpus
        if gpus <= 1:
            return self.launch_single
        if self.smoke is not None:
            fit = f" --predicted {shlex.quote(predicted)}" if predicted else ""
            return self.launch_distributed.format(
                gpus=f"$(revunet processes --gpus {gpus} --without-gpu {self.smoke.processes}{fit})"
            )
        return self.launch_distributed.format(gpus=gpus)

    def launched_processes(self, name: str) -> int:
        """How many processes, one per GPU, experiment ``name``'s launcher starts for certain: its
        GPUs in a real multi-GPU run (`revunet gpu-slots --processes` refuses fewer GPUs), 0 where
        that is not fixed in advance (one process, or a smoke run, whose launcher adapts)."""
        gpus = self.experiments[name].resources.gpus
        return gpus if gpus > 1 and self.smoke is None else 0

    def train_options(self) -> str:
        """Options of `revunet train` that depend on the config. No ``--restart``: a rerun job
        resumes from ``last.pt`` exactly when its experiment and data are unchanged and starts
        over otherwise (:mod:`revunet.training.resumption`); ``--time-limit auto`` stops it
        cleanly before the end of the SLURM job it runs in (``train_time_limit``)."""
        return f"--device {self.device} --no-progress --time-limit {self.train_time_limit}"

    def compiled_experiments(self) -> list[str]:
        """Experiments trained again with ``compile: true`` (a smoke run with ``smoke_run.compiled``)."""
        return self.experiment_names() if self.smoke is not None and self.smoke.compiled else []

    def prediction_options(self, name: str) -> str:
        """`revunet memory --experiment` options for ``name``: its dataset's volume shape (whole-volume
        training) and the device its job trains on (AMP's dtype; auto counts as cpu: bfloat16 and float16
        take the same bytes)."""
        plan = self.experiments[name]
        shape = self.datasets[plan.dataset].shape
        volume = f"--volume-shape {','.join(map(str, shape))} " if shape is not None else ""
        return f"{volume}--for-device {'cuda' if self.device == 'cuda' else 'cpu'}"

    def report_options(self) -> str:
        """The options `revunet tables` and `revunet figures` share: ``--smoke`` in a smoke run."""
        return "--smoke" if self.smoke is not None else ""

    def experiment_names(self, dataset: str | None = None) -> list[str]:
        """Selected experiments, in config order (optionally only those of ``dataset``)."""
        return [name for name, plan in self.experiments.items() if dataset is None or plan.dataset == dataset]

    def snapshots(self) -> list[tuple[str, str]]:
        """(experiment, epoch as NNNN) of every snapshot the selected experiments keep and report."""
        return [
            (name, f"{epoch:04d}")
            for name, plan in self.experiments.items()
            for epoch in plan.experiment.snapshot_epochs
            if epoch <= plan.experiment.epochs
        ]

    def postprocessed_experiments(self) -> list[str]:
        """Selected BraTS experiments: those whose predictions are also scored after post-processing (if asked)."""
        if not self.evaluate_postprocessed:
            return []
        return [name for name, plan in self.experiments.items() if plan.experiment.task == "brats"]

    def postprocess_options(self) -> str:
        """The `revunet evaluate` options of the post-processed evaluation."""
        return f"--postprocess --et-min-mm3 {self.et_min_mm3:g} --min-component-mm3 {self.min_component_mm3:g}"

    def protocol(self, name: str) -> dict[str, str]:
        """How experiment ``name`` uses its data, in words (:func:`revunet.experiments.protocol.protocol_row`)."""
        plan = self.experiments[name]
        return protocol_row(name, plan.experiment, self.datasets[plan.dataset], plan.split, plan.resources.gpus)

    def splits_in_use(self) -> list[tuple[str, str]]:
        """(dataset, split) pairs the selected experiments train on."""
        return sorted({(plan.dataset, plan.split) for plan in self.experiments.values()})


def plan_workflow(config: Mapping[str, Any]) -> WorkflowPlan:
    """Turn a schema-validated config into the plan of the run (see the module docstring)."""
    preset = _choice(config.get("preset", "demo"), PRESETS, "preset")
    presets = _mapping(config.get("presets", {}), "presets")
    preset_block = _mapping(presets.get(preset, {}), f"presets.{preset}")
    smoke = (
        SmokeSettings.from_config(_mapping(config.get("smoke_run", {}), "smoke_run")) if config.get("smoke") else None
    )
    datasets, experiments = _plan_experiments(config, preset, preset_block, smoke)
    launch = _mapping(config.get("launch", {}), "launch")
    postprocessing = _mapping(config.get("postprocessing", {}), "postprocessing")
    return WorkflowPlan(
        preset=preset,
        device=_choice(config.get("device", "auto"), ("auto", "cpu", "cuda"), "device"),
        datasets=datasets,
        experiments=experiments,
        infer_resources=_infer_resources(preset_block, preset, smoke),
        memory_tables=_memory_tables(config.get("memory_tables", MEMORY_TABLES)),
        capacity_arguments=_arguments({"capacity": smoke.capacity} if smoke else preset_block, "capacity"),
        complexity_arguments=_arguments(preset_block, "complexity"),
        train_time_limit=_time_limit(config.get("train_time_limit", "auto")),
        launch_single=launch.get("single", WorkflowPlan.launch_single),
        launch_distributed=launch.get("distributed", WorkflowPlan.launch_distributed),
        et_min_mm3=float(postprocessing.get("et_min_mm3", WorkflowPlan.et_min_mm3)),
        min_component_mm3=float(postprocessing.get("min_component_mm3", WorkflowPlan.min_component_mm3)),
        evaluate_postprocessed=bool(postprocessing.get("evaluate", True)),
        smoke=smoke,
    )


def _plan_experiments(
    config: Mapping[str, Any], preset: str, preset_block: Mapping[str, Any], smoke: SmokeSettings | None
) -> tuple[dict[str, DatasetPlan], dict[str, ExperimentPlan]]:
    """The selected experiments at ``preset`` and the datasets they use, checked against each other
    (cut to a smoke run when ``smoke`` is given: :mod:`revunet.experiments.smoke`)."""
    datasets_config = _mapping(config.get("datasets", {}), "datasets")
    recipes = _mapping(config.get("recipes", {}), "recipes")
    experiments_config = _mapping(config.get("experiments", {}), "experiments")
    if not experiments_config:
        raise ConfigError("config: experiments: no experiments are defined")
    train_defaults = _preset_resources(preset_block, preset, "train")
    experiment_defaults = _mapping(preset_block.get("experiment", {}), f"presets.{preset}.experiment")

    datasets: dict[str, DatasetPlan] = {}
    experiments: dict[str, ExperimentPlan] = {}
    for name in _selected(config, experiments_config):
        plan = _plan_experiment(
            name, experiments_config[name], recipes, experiment_defaults, train_defaults, preset, datasets_config
        )
        if plan.dataset not in datasets:
            datasets[plan.dataset] = _plan_dataset(
                plan.dataset, datasets_config, preset, config.get("data_root"), smoke
            )
        plan = _fit_to_dataset(plan, datasets[plan.dataset], preset)
        experiments[name] = plan if smoke is None else _smoke_plan(plan, smoke)
    check_shared_folders(datasets, preset)
    return datasets, experiments


def _plan_dataset(
    name: str, datasets_config: Mapping[str, Any], preset: str, data_root: str | None, smoke: SmokeSettings | None
) -> DatasetPlan:
    if smoke is None:
        return plan_dataset(name, datasets_config[name], preset, data_root)
    return smoke_dataset(name, datasets_config[name], preset, data_root, smoke)


def _smoke_plan(plan: ExperimentPlan, smoke: SmokeSettings) -> ExperimentPlan:
    """``plan`` as a smoke job: a few steps, the smoke run's resources with the experiment's GPU count."""
    resources = _resources({**DEFAULT_RESOURCES, **smoke.train, "gpus": plan.resources.gpus}, "smoke_run.train")
    experiment = smoke_experiment(plan.experiment, smoke, processes=plan.resources.gpus)
    return dataclasses.replace(plan, experiment=experiment, resources=resources)


def _selected(config: Mapping[str, Any], experiments_config: Mapping[str, Any]) -> list[str]:
    """The experiments ``select`` names (all when empty), in config order."""
    selected = list(config.get("select") or [])
    unknown = [name for name in selected if name not in experiments_config]
    if unknown:
        raise ConfigError(f"config: select names unknown experiment(s) {unknown}; known: {sorted(experiments_config)}")
    return [name for name in experiments_config if not selected or name in selected]


def _fit_to_dataset(plan: ExperimentPlan, dataset: DatasetPlan, preset: str) -> ExperimentPlan:
    """``plan`` checked against its dataset (split and task), its training input resolved."""
    if plan.split not in dataset.splits:
        raise ConfigError(
            f"config: experiments.{plan.name}: split {plan.split!r} is not defined for dataset {dataset.name!r} "
            f"at preset {preset} (datasets.{dataset.name}.{preset}.splits has {sorted(dataset.splits)})"
        )
    check_selection(plan.name, plan.experiment, dataset.splits[plan.split], dataset, preset)
    check_canvas(plan.name, plan.experiment, dataset, preset)
    plan = _resolve_training_input(plan, dataset, preset)
    if plan.experiment.task != dataset.task:
        raise ConfigError(
            f"config: experiments.{plan.name}: task {plan.experiment.task!r} does not match dataset "
            f"{dataset.name!r} (task {dataset.task!r})"
        )
    return plan


def _time_limit(value: Any) -> str:
    """``train_time_limit`` as `revunet train --time-limit` takes it."""
    if value in ("auto", "none"):
        return str(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"config: train_time_limit: got {value!r}, expected auto, none or minutes > 0")
    return f"{value:g}"


def _preset_resources(preset_block: Mapping[str, Any], preset: str, job: str) -> Resources:
    """What each ``job`` (train or infer) asks for at ``preset``: the defaults, updated by the preset."""
    where = f"presets.{preset}.{job}"
    return _resources({**DEFAULT_RESOURCES, **_mapping(preset_block.get(job, {}), where)}, where)


def _infer_resources(preset_block: Mapping[str, Any], preset: str, smoke: SmokeSettings | None) -> Resources:
    if smoke is None:
        return _preset_resources(preset_block, preset, "infer")
    return _resources({**DEFAULT_RESOURCES, **smoke.infer}, "smoke_run.infer")


def _arguments(preset_block: Mapping[str, Any], key: str) -> str:
    """The preset's extra arguments of a command (``capacity``, ``complexity``), shell-quoted."""
    return " ".join(shlex.quote(str(arg)) for arg in preset_block.get(key, []) or [])


def _memory_tables(value: Any) -> tuple[str, ...]:
    """The paper memory tables to measure: names from :data:`revunet.catalog.MEMORY_TABLES`."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"config: memory_tables must be a list of names from {list(MEMORY_TABLES)}, got {value!r}")
    unknown = [name for name in value if name not in MEMORY_TABLES]
    if unknown:
        raise ConfigError(
            f"config: memory_tables: unknown table(s) {unknown}; expected names from {list(MEMORY_TABLES)}"
        )
    return tuple(value)


def _plan_experiment(
    name: str,
    entry: Any,
    recipes: Mapping[str, Any],
    experiment_defaults: Mapping[str, Any],
    train_defaults: Resources,
    preset: str,
    datasets_config: Mapping[str, Any],
) -> ExperimentPlan:
    where = f"experiments.{name}"
    entry = _mapping(entry, where)
    for block in PRESETS:
        if block in entry and not isinstance(entry[block], Mapping):
            raise ConfigError(
                f"config: {where}.{block} must be a mapping (the overrides at {block} scale), got {entry[block]!r}; "
                "the paper citation of an experiment belongs in its recipe"
            )
    block = _mapping(entry.get(preset, {}), f"{where}.{preset}")
    if "recipe" in block:
        raise ConfigError(f"config: {where}.{preset}: 'recipe' can only be set on the experiment itself")

    recipe_name = entry.get("recipe")
    recipe: Mapping[str, Any] = {}
    if recipe_name is not None:
        if recipe_name not in recipes:
            raise ConfigError(f"config: {where}.recipe: unknown recipe {recipe_name!r}; known: {sorted(recipes)}")
        recipe = _mapping(recipes[recipe_name], f"recipes.{recipe_name}")
        misplaced = sorted(set(recipe) & set(WORKFLOW_KEYS))
        if misplaced:
            raise ConfigError(f"config: recipes.{recipe_name}: {misplaced} belong in each experiment, not in a recipe")

    workflow = {key: entry[key] for key in WORKFLOW_KEYS if key in entry}
    workflow = deep_merge(workflow, {key: block[key] for key in WORKFLOW_KEYS if key in block})
    dataset = workflow.get("dataset")
    if not isinstance(dataset, str):
        raise ConfigError(f"config: {where}: 'dataset' must name a dataset, got {dataset!r}")
    if dataset not in datasets_config:
        raise ConfigError(f"config: {where}: unknown dataset {dataset!r}; known: {sorted(datasets_config)}")
    dataset_config = _mapping(datasets_config[dataset], f"datasets.{dataset}")
    if preset not in dataset_config:
        raise ConfigError(
            f"config: {where} uses dataset {dataset!r}, which has no {preset}: block (datasets.{dataset}.{preset})"
        )

    fields = deep_merge(recipe, _fields(entry))
    fields = deep_merge(fields, experiment_defaults)
    fields = deep_merge(fields, _fields(block))
    fields = {"task": dataset_config.get("task"), **fields, "name": name}
    try:
        experiment = Experiment.from_dict(fields, source=f"config: {where} (preset {preset})")
    except ValueError as error:
        raise ConfigError(str(error)) from None

    overrides = _mapping(workflow.get("resources", {}), f"{where}.resources")
    resources = _resources({**dataclasses.asdict(train_defaults), **overrides}, f"{where}.resources")
    return ExperimentPlan(experiment, dataset, str(workflow.get("split", "main")), resources)


def _resolve_training_input(plan: ExperimentPlan, dataset: DatasetPlan, preset: str) -> ExperimentPlan:
    """``model_params.vae_input_size: training_input`` -> the size the model trains on (its patch,
    or the dataset's preprocessed shape for whole volumes), so a VAE branch follows the data."""
    params = plan.experiment.model_params
    if params.get("vae_input_size") != TRAINING_INPUT:
        return plan
    size = plan.experiment.patch_size or dataset.shape
    if size is None:
        raise ConfigError(
            f"config: experiments.{plan.name}.model_params.vae_input_size: {TRAINING_INPUT!r} needs a patch_size "
            f"or a fixed shape of dataset {dataset.name!r} at preset {preset}"
        )
    experiment = plan.experiment.replace(model_params={**params, "vae_input_size": list(size)})
    return dataclasses.replace(plan, experiment=experiment)


def _fields(block: Mapping[str, Any]) -> dict[str, Any]:
    """The experiment fields of an entry or preset block (workflow keys and preset blocks removed)."""
    return {key: value for key, value in block.items() if key not in WORKFLOW_KEYS and key not in PRESETS}


def _resources(values: Mapping[str, Any], where: str) -> Resources:
    unknown = sorted(set(values) - set(DEFAULT_RESOURCES))
    if unknown:
        raise ConfigError(f"config: {where}: unknown resource(s) {unknown}; known: {sorted(DEFAULT_RESOURCES)}")
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "gpus" else 1):
            raise ConfigError(f"config: {where}: resource {key!r} must be a positive integer, got {value!r}")
    return Resources(**values)

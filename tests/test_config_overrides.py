"""Config overrides that work: a --configfile or --config can swap a split's scheme and any
list, numbers are numbers on every route, and every config error at start is a few lines
naming the key path, what it must be and what it got (here and through `snakemake -n`)."""

from __future__ import annotations

import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from revunet.catalog import AUGMENTATION_PRESETS, LOSS_NAMES, MODEL_NAMES, OPTIMIZERS
from revunet.documents import read_scalar
from revunet.experiments.config_files import ConfigError, check_config, merge_config, read_workflow_config
from revunet.experiments.plan import plan_workflow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
PENDSE_FRACTION = (
    "datasets: {brats: {paper: {splits: {pendse: {fraction: 0.9}}}},"
    " brats_whole: {paper: {splits: {pendse: {fraction: 0.9}}}}}\n"
)


def workflow_config(tmp_path: Path, *overlays: str, overrides=None) -> dict:
    """config.yaml, then each overlay as a --configfile, then --config ``overrides``, checked as the Snakefile does."""
    files = []
    for i, text in enumerate(overlays):
        files.append(tmp_path / f"overlay{i}.yaml")
        files[-1].write_text(text, encoding="utf-8")
    return check_config(read_workflow_config(CONFIG, files, overrides), SCHEMA)


def paper(config: dict):
    return plan_workflow({**config, "preset": "paper", "data_root": "/data"})


def problem(config: dict) -> str:
    """The message of the ConfigError that checking and planning ``config`` raises (at most 5 lines)."""
    with pytest.raises(ConfigError) as error:
        plan_workflow(check_config(config, SCHEMA))
    message = str(error.value)
    assert len(message.splitlines()) <= 5, message
    return message


def changed(path: str, value) -> dict:
    config = copy.deepcopy(yaml.safe_load(CONFIG.read_text(encoding="utf-8")))
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


# --------------------------------------------------------------------------- merging


def test_a_configfile_replaces_the_pendse_splits_counts_by_a_fraction(tmp_path):
    config = workflow_config(tmp_path, PENDSE_FRACTION)
    assert config["datasets"]["brats"]["paper"]["splits"]["pendse"] == {"fraction": 0.9, "seed": 0}
    split = paper(config).datasets["brats"].splits["pendse"]
    assert (split.fraction, split.counts) == (0.9, None)
    assert split.arguments() == "--fraction 0.9 --seed 0"
    assert paper(config).datasets["brats_whole"].splits["pendse"] == split


def test_two_canvases_of_one_folder_must_split_it_alike(tmp_path):
    """Pendse et al.'s rows on two canvases are one table: tested on the same cases or refused."""
    config = workflow_config(tmp_path, "datasets: {brats: {paper: {splits: {pendse: {fraction: 0.9}}}}}\n")
    with pytest.raises(ConfigError, match=r"datasets 'brats' and 'brats_whole' read the same folder .* \['pendse'\]"):
        paper(config)


def test_counts_replace_a_fraction_and_the_splits_other_keys_still_merge(tmp_path):
    config = workflow_config(tmp_path, "datasets: {brats: {demo: {splits: {main: {counts: [4, 1], seed: 3}}}}}\n")
    assert config["datasets"]["brats"]["demo"]["splits"]["main"] == {"counts": [4, 1], "seed": 3}
    # a split override that names no scheme keeps the inherited one
    config = workflow_config(tmp_path, "datasets: {iseg: {demo: {splits: {main: {seed: 7}}}}}\n")
    assert config["datasets"]["iseg"]["demo"]["splits"]["main"] == {"counts": [9, 1], "seed": 7}
    # counts replace a fraction and its validation share; a fraction keeps the share it does not name
    config = workflow_config(tmp_path, "datasets: {brats: {demo: {splits: {bruegger: {counts: [12, 4, 4]}}}}}\n")
    assert config["datasets"]["brats"]["demo"]["splits"]["bruegger"] == {"counts": [12, 4, 4], "seed": 0}
    config = workflow_config(tmp_path, "datasets: {brats: {demo: {splits: {bruegger: {fraction: 0.6}}}}}\n")
    assert config["datasets"]["brats"]["demo"]["splits"]["bruegger"] == {"fraction": 0.6, "validation": 0.15, "seed": 0}


def test_both_schemes_in_one_override_are_an_error_naming_the_split(tmp_path):
    overlay = "datasets: {brats: {paper: {splits: {pendse: {fraction: 0.9, counts: [30, 5]}}}}}\n"
    with pytest.raises(ConfigError) as error:
        workflow_config(tmp_path, overlay)
    assert str(error.value) == (
        "config: datasets.brats.paper.splits.pendse: give exactly one of 'fraction' or 'counts', got both"
    )


def test_lists_are_replaced_never_merged(tmp_path):
    overlay = (
        "select: [bruegger_rev_1_1_128]\nmemory_tables: [invres_iseg]\n"
        "recipes: {bruegger2019: {milestones: [100]}}\n"
        "datasets: {brats: {demo: {shape: [32, 48, 32]}}}\n"
    )
    config = workflow_config(tmp_path, overlay)
    assert config["select"] == ["bruegger_rev_1_1_128"] and config["memory_tables"] == ["invres_iseg"]
    assert config["recipes"]["bruegger2019"]["milestones"] == [100]
    assert config["datasets"]["brats"]["demo"]["shape"] == [32, 48, 32]
    plan = paper(config)
    assert plan.experiments["bruegger_rev_1_1_128"].experiment.milestones == (100,)
    assert plan.memory_tables == ("invres_iseg",)


def test_a_new_source_drops_the_local_copys_path_unless_given():
    base = {"datasets": {"brats": {"paper": {"source": "local", "path": "MICCAI", "shape": [1, 2, 3]}}}}
    to_download = merge_config(base, {"datasets": {"brats": {"paper": {"source": "decathlon"}}}})
    assert to_download["datasets"]["brats"]["paper"] == {"source": "decathlon", "shape": [1, 2, 3]}
    same_source = merge_config(base, {"datasets": {"brats": {"paper": {"source": "local"}}}})
    assert same_source == base
    other_copy = merge_config(base, {"datasets": {"brats": {"paper": {"source": "local", "path": "/elsewhere"}}}})
    assert other_copy["datasets"]["brats"]["paper"]["path"] == "/elsewhere"
    # the rule holds only where a split lives: elsewhere fraction and counts merge like any keys
    assert merge_config({"other": {"fraction": 1}}, {"other": {"counts": 2}}) == {"other": {"fraction": 1, "counts": 2}}


def test_the_decathlon_download_plans_from_a_configfile_naming_only_the_source(tmp_path):
    config = workflow_config(tmp_path, "datasets: {brats: {paper: {source: decathlon}}}\n")
    brats = paper({**config, "select": ["pendse_mbconv_deeper"]}).datasets["brats"]
    assert (brats.source, brats.path) == ("decathlon", None)


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e-4", 1e-4),
        ("1.0e-4", 1e-4),
        ("5e-5", 5e-5),
        ("1E3", 1000.0),
        ("3", 3),
        ("true", True),
        ("null", None),
        ("/data/brats", "/data/brats"),
        ("MICCAI_BraTS2020_TrainingData", "MICCAI_BraTS2020_TrainingData"),
        ("1e-4x", "1e-4x"),
        ("", ""),
        ("# note", "# note"),
        ("[a", "[a"),
        ("a: b", "a: b"),
        ("2020-01-01", "2020-01-01"),
    ],
)
def test_read_scalar_reads_numbers_and_leaves_other_text_alone(text, value):
    read = read_scalar(text)
    assert read == value and type(read) is type(value)


def test_exponent_numbers_are_numbers_in_config_yaml_and_a_configfile(tmp_path):
    default = tmp_path / "config.yaml"
    default.write_text("recipes: {a: {lr: 1e-4, weight_decay: 1.0e-4}}\n", encoding="utf-8")
    extra = tmp_path / "mine.yaml"
    extra.write_text("recipes: {b: {lr: 5e-5, row: '1e-4'}}\n", encoding="utf-8")
    recipes = read_workflow_config(default, [extra])["recipes"]
    assert recipes == {"a": {"lr": 1e-4, "weight_decay": 1e-4}, "b": {"lr": 5e-5, "row": "1e-4"}}


@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
def test_config_values_as_snakemake_parses_them_become_numbers_but_paths_stay_strings(tmp_path):
    from snakemake.cli import parse_config

    overrides = parse_config(
        [
            "presets={paper: {experiment: {lr: 5e-5, epochs: 3, amp: true, patience: null}}}",
            "device=cpu",
            "data_root=/data/1e4",
            "select=[pendse_mbconv_base]",
        ]
    )
    # what reaches the Snakefile: every nested scalar is text
    assert overrides["presets"]["paper"]["experiment"] == {
        "lr": "5e-5",
        "epochs": "3",
        "amp": "true",
        "patience": "null",
    }
    config = check_config(read_workflow_config(CONFIG, (), overrides), SCHEMA)
    assert config["presets"]["paper"]["experiment"] == {
        "num_workers": 4,
        "lr": 5e-5,
        "epochs": 3,
        "amp": True,
        "patience": None,
    }
    assert (config["device"], config["data_root"], config["select"]) == ("cpu", "/data/1e4", ["pendse_mbconv_base"])
    e = plan_workflow({**config, "preset": "paper"}).experiments["pendse_mbconv_base"].experiment
    assert (e.lr, e.epochs, e.amp) == (5e-5, 3, True)


# --------------------------------------------------------------------------- errors at start


def test_check_config_fills_in_the_schemas_defaults():
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    for key in ("launch", "recipes", "select", "device"):
        del config[key]
    del config["datasets"]["iseg"]["demo"]["splits"]["main"]["seed"]
    filled = check_config(config, SCHEMA)
    assert filled["launch"] == {
        "single": "revunet",
        "distributed": "torchrun --standalone --nproc_per_node={gpus} -m revunet.cli",
    }
    assert (filled["recipes"], filled["select"], filled["device"]) == ({}, [], "auto")
    assert filled["datasets"]["iseg"]["demo"]["splits"]["main"]["seed"] == 0
    assert "launch" not in config  # the caller's config is left alone


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("bogus_key", 1, "config: unknown key(s) ['bogus_key']; known: ['data_root', "),
        ("preset", "huge", "config: preset must be one of ['demo', 'paper'], got 'huge'"),
        ("presets.demo.train.gpu", 1, "config: presets.demo.train: unknown key(s) ['gpu']; known: ['gpus', "),
        ("presets.paper.train.runtime", "3d", "config: presets.paper.train.runtime must be an integer, got '3d'"),
        (
            "experiments.pendse_baseline.paper",
            {"resources": {"gpus": 4.5}},
            "resources.gpus must be an integer, got 4.5",
        ),
        ("launch.single", False, "config: launch.single must be a string, got False"),
        ("select", "pendse_baseline", "config: select must be a list, got 'pendse_baseline'"),
        ("datasets.brats.demo.splits.main.fraction", 1.5, "splits.main.fraction must be a number < 1, got 1.5"),
        (
            "datasets.iseg.paper.splits.main",
            {"seed": 0},
            "config: datasets.iseg.paper.splits.main: give exactly one of 'fraction' or 'counts', got neither",
        ),
        ("datasets.iseg.demo.splits.main", 0.8, "config: datasets.iseg.demo.splits.main must be a mapping, got 0.8"),
        ("datasets.iseg.demo.shape", [48, 64], "config: datasets.iseg.demo.shape must be a list of 3 items, got 2"),
        ("datasets.iseg.task", "lits", "config: datasets.iseg.task must be one of ['brats', 'iseg'], got 'lits'"),
        ("datasets.brats.demo.spacing", 0.5, "config: datasets.brats.demo.spacing must be a number >= 1, got 0.5"),
        ("datasets.other", {"demo": {}}, "config: datasets.other: missing key(s) ['task']"),
        ("memory_tables", ["nope"], "config: memory_tables: unknown table(s) ['nope']"),
    ],
)
def test_config_errors_name_the_key_path_what_it_must_be_and_what_it_got(path, value, message):
    text = problem(changed(path, value))
    assert message in text and "Failed validating" not in text


def test_many_problems_are_cut_to_five_lines():
    config = changed("preset", "huge")
    for key in ("threads", "gpus", "mem_mb", "runtime"):
        config["presets"]["demo"]["train"][key] = "x"
    lines = problem(config).splitlines()
    assert lines[0].startswith("config: preset must be") and lines[-1] == "... and 1 more problem(s)"


EXPERIMENT = "config: experiments.bruegger_rev_1_1_128 (preset paper): "


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("lr", -1, "lr must be positive, got -1.0"),
        ("lr", "1e-4x", "key 'lr' must be a number, got '1e-4x'"),
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("batch_size", 0, "batch_size must be an integer >= 1, got 0"),
        ("accumulation", 0, "accumulation must be an integer >= 1, got 0"),
        ("validate_every", 0, "validate_every must be an integer >= 1, got 0"),
        ("max_steps_per_epoch", 0, "max_steps_per_epoch must be an integer >= 1 or null, got 0"),
        ("ema_alpha", 1.0, "ema_alpha must lie in [0, 1), got 1.0"),
        ("gamma", 0, "gamma must be positive, got 0.0"),
        ("weight_decay", -1e-5, "weight_decay must be a number >= 0, got -1e-05"),
        ("milestones", [400, 250], "milestones must be increasing epochs >= 1, got [400, 250]"),
        ("milestones", [0, 10], "milestones must be increasing epochs >= 1, got [0, 10]"),
        ("milestones", [1.5], "key 'milestones' must be a list of integers, got [1.5]"),
        ("patch_size", [128, 0, 128], "patch_size must be three positive integers or null, got [128, 0, 128]"),
        ("window_overlap", -2, "window_overlap must be an even number of voxels >= 0, got -2"),
        ("model", "unet", "model must be one of ['nonewnet', 'partially_reversible', 'unet3d', "),
        ("loss", "dice", "loss must be one of ['bruegger2019', 'invres2020', 'pendse2020', 'dice_bce'], got 'dice'"),
        ("augmentation", "strong", "augmentation must be one of ['none', 'bruegger2019', "),
        ("optimizer", "lamb", "optimizer must be one of ['adam', 'adamw', 'sgd'], got 'lamb'"),
    ],
)
def test_experiment_fields_are_checked_when_the_workflow_starts(key, value, message):
    config = changed(f"experiments.bruegger_rev_1_1_128.{key}", value)
    with pytest.raises(ConfigError) as error:
        paper(check_config(config, SCHEMA))
    text = str(error.value)
    assert text.startswith(EXPERIMENT) and message in text and len(text.splitlines()) == 1, text


def test_a_bad_recipe_value_names_the_first_experiment_that_uses_it():
    config = changed("recipes.pendse2020.lr", 0)
    with pytest.raises(
        ConfigError, match=r"^config: experiments\.pendse_baseline \(preset paper\): lr must be positive"
    ):
        paper(check_config(config, SCHEMA))


def test_window_overlap_must_fit_the_sliding_window():
    config = changed("experiments.invres_iseg_unet3d.window_overlap", 64)
    with pytest.raises(ConfigError, match=r"window_overlap must be smaller than sliding_window \[64, 64, 64\], got 64"):
        paper(check_config(config, SCHEMA))


def test_the_catalogs_names_are_the_registries_names():
    import torch

    from revunet.data import augment
    from revunet.experiments.recipe import Experiment
    from revunet.models.registry import available
    from revunet.training.losses import LOSSES
    from revunet.training.setup import make_optimizer

    assert MODEL_NAMES == tuple(available())
    assert LOSS_NAMES == tuple(LOSSES)
    assert AUGMENTATION_PRESETS == augment.PRESETS
    for name in AUGMENTATION_PRESETS:
        augment.AugmentationConfig.preset(name)
    model = torch.nn.Linear(2, 1)
    for name in OPTIMIZERS:
        experiment = Experiment(name="e", task="brats", model="unet3d", optimizer=name)
        assert isinstance(make_optimizer(experiment, model.parameters()), torch.optim.Optimizer)


# --------------------------------------------------------------------------- through snakemake -n


def dry_run(tmp_path: Path, *args: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path)]
    done = subprocess.run(
        [*command, "--dry-run", "--configfile", str(CONFIG), *args], capture_output=True, text=True, timeout=300
    )
    return done.returncode, done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
def test_snakemake_plans_a_configfile_that_replaces_the_pendse_split_scheme(tmp_path):
    overlay = tmp_path / "my-lab.yaml"
    overlay.write_text(PENDSE_FRACTION + "select: [pendse_mbconv_deeper]\n", encoding="utf-8")
    lr = "presets={paper: {experiment: {lr: 5e-5}}}"
    code, output = dry_run(tmp_path, str(overlay), "-p", "--config", "preset=paper", "data_root=/data", lr)
    assert code == 0, output
    assert "--fraction 0.9 --seed 0 --out results/data/brats/splits/pendse.json" in output
    assert '"lr": 5e-05' in output and "--counts" not in output


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed")
@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        (
            "datasets: {brats: {paper: {splits: {pendse: {fraction: 0.9, counts: [30, 5]}}}}}\n",
            "config: datasets.brats.paper.splits.pendse: give exactly one of 'fraction' or 'counts', got both",
        ),
        (
            "experiments: {bruegger_rev_1_1_128: {lr: -1}}\n",
            "config: experiments.bruegger_rev_1_1_128 (preset paper): lr must be positive, got -1.0",
        ),
    ],
)
def test_snakemake_prints_our_short_message_at_the_end(tmp_path, overlay, message):
    path = tmp_path / "bad.yaml"
    path.write_text(overlay, encoding="utf-8")
    code, output = dry_run(tmp_path, str(path), "--config", "preset=paper", "data_root=/data")
    assert code != 0
    assert message in output.splitlines()[-3:-1], output
    assert len(output.splitlines()) <= 6 and "Traceback" not in output and "Failed validating" not in output, output
    assert not (tmp_path / "results").exists()


def test_a_config_file_that_is_missing_or_not_a_mapping_is_a_config_error(tmp_path):
    listed = tmp_path / "list.yaml"
    listed.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^config file .*list\.yaml: must be a mapping of config keys, got list$"):
        read_workflow_config(CONFIG, [listed])
    with pytest.raises(ConfigError, match=r"^config file .*absent\.yaml: no such file$"):
        read_workflow_config(CONFIG, [tmp_path / "absent.yaml"])


def test_the_start_of_the_workflow_imports_no_torch():
    """Snakemake parses the Snakefile for every job: reading, checking and planning stay torch-free."""
    code = (
        "import sys\n"
        "from revunet.experiments.config_files import check_config, read_workflow_config\n"
        "from revunet.experiments.plan import plan_workflow\n"
        f"plan_workflow(check_config(read_workflow_config({str(CONFIG)!r}), {str(SCHEMA)!r}))\n"
        "print(sorted(name for name in ('torch', 'numpy', 'pandas') if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"

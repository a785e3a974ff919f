"""config.yaml -> experiments: the papers' recipes at paper scale, the demo scale-down, and
errors that name the key at fault."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml

from revunet.catalog import MEMORY_TABLES, REPORT_FIGURES, REPORT_TABLES, SYNTHETIC_FOLDERS
from revunet.cli import main
from revunet.experiments.config_files import deep_merge, merge_config, read_workflow_config
from revunet.experiments.plan import ConfigError, plan_workflow
from revunet.experiments.recipe import read_experiment
from revunet.models.registry import build_model
from revunet.papers import paper_results

ROOT = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
NAMES = [
    "bruegger_baseline", "bruegger_rev_1_1_128", "bruegger_rev_1_1_full", "bruegger_rev_2_1_full",
    "bruegger_rev_3_1_full", "bruegger_rev_4_1_full", "invres_iseg_unet3d", "invres_iseg_partial",
    "invres_iseg_full", "invres_brats_unet3d", "invres_brats_partial", "invres_brats_full",
    "pendse_baseline", "pendse_mbconv_base", "pendse_mbconv_deeper", "pendse_mbconv_wider",
]  # fmt: skip


def config(**changes):
    return {**copy.deepcopy(CONFIG), **changes}


@pytest.fixture(scope="module")
def paper():
    return plan_workflow(config(preset="paper", data_root="/data"))


@pytest.fixture(scope="module")
def demo():
    return plan_workflow(config())


def test_every_paper_row_has_one_experiment_linked_to_it(paper):
    assert list(paper.experiments) == NAMES
    results = paper_results()
    linked = sorted((p.experiment.table, p.experiment.row) for p in paper.experiments.values())
    rows = sorted((table, row["row"]) for table in ("bruegger2019", "invres_iseg", "invres_brats", "pendse2020")
                  for row in results[table]["rows"])  # fmt: skip
    assert linked == rows


def test_bruegger_recipe_at_paper_scale(paper):
    depths = {}
    for name in NAMES[:6]:
        plan = paper.experiments[name]
        e = plan.experiment
        assert (e.optimizer, e.lr, e.weight_decay, e.gamma) == ("adam", 1e-4, 1e-5, 0.2)
        assert (e.milestones, e.epochs, e.ema_alpha, e.patience) == ((250, 400, 550), 1000, 0.95, 120)
        assert (e.loss, e.augmentation, e.batch_size, e.task) == ("bruegger2019", "bruegger2019", 1, "brats")
        assert (plan.dataset, plan.split, plan.resources.gpus) == ("brats2018", "main", 1)
        depths[name] = e.model_params.get("encoder_depth")
    assert paper.experiments["bruegger_baseline"].experiment.model == "nonewnet"
    assert paper.experiments["bruegger_baseline"].experiment.patch_size == (128, 128, 128)
    assert paper.experiments["bruegger_rev_1_1_128"].experiment.patch_size == (128, 128, 128)
    assert all(paper.experiments[n].experiment.patch_size is None for n in NAMES[2:6])
    assert [depths[n] for n in NAMES[1:6]] == [1, 1, 2, 3, 4]
    brats2018 = paper.datasets["brats2018"]
    assert brats2018.shape == (160, 192, 160) and brats2018.path == "/data/MICCAI_BraTS_2018_Data_Training"
    assert brats2018.splits["main"].arguments() == "--fraction 0.8 --validation 0.1 --seed 0"


def test_pendse_recipe_runs_on_four_gpus(paper):
    shapes = {}
    for name in NAMES[12:]:
        plan = paper.experiments[name]
        e = plan.experiment
        assert (e.lr, e.milestones, e.gamma, e.epochs, e.amp) == (1e-4, (250, 400), 0.2, 500, True)
        assert (plan.resources.gpus, plan.split) == (4, "pendse")
        assert paper.launcher(name) == "torchrun --standalone --nproc_per_node=4 -m revunet.cli"
        assert paper.launched_processes(name) == 4  # gpu-slots refuses the job on fewer GPUs
        shapes[name] = (e.patch_size, e.model_params["channels"], e.model_params.get("expand_ratio"))
    assert shapes == {
        "pendse_baseline": ((256, 256, 160), [60, 120, 180, 240, 480], None),
        "pendse_mbconv_base": ((256, 256, 160), [30, 60, 120, 180, 240], 2),
        "pendse_mbconv_deeper": ((128, 128, 128), [30, 60, 120, 180, 240, 480], 2),
        "pendse_mbconv_wider": ((128, 128, 128), [30, 60, 120, 180, 240], 8),
    }
    assert paper.datasets["brats"].splits["pendse"].arguments().startswith("--counts 329,40 ")


def test_invertible_residual_recipes(paper):
    for name in NAMES[6:12]:
        e = paper.experiments[name].experiment
        assert (e.optimizer, e.lr, e.loss) == ("adam", 2e-4, "invres2020")
    for name in NAMES[6:9]:
        e = paper.experiments[name].experiment
        assert (e.patch_size, e.samples_per_volume, e.task) == ((64, 64, 64), 1024, "iseg")
        assert e.model_params["output"] == "softmax" and e.model_params["in_channels"] == 2
    for name in NAMES[9:12]:
        assert paper.experiments[name].experiment.patch_size == (128, 128, 128)
    assert paper.experiments["invres_iseg_full"].experiment.model_params["vae_input_size"] == [64, 64, 64]
    iseg = paper.datasets["iseg"].splits["main"]
    assert (iseg.counts, iseg.selects) == ((9, 1), False)


def test_demo_scales_down_on_synthetic_data_one_thread_per_job(demo):
    assert list(demo.experiments) == NAMES
    assert {name: d.source for name, d in demo.datasets.items()} == {"brats": "synthetic", "iseg": "synthetic"}
    assert {name: d.shape for name, d in demo.datasets.items()} == {"brats": (48, 64, 48), "iseg": (48, 64, 48)}
    steps = 0
    for plan in demo.experiments.values():
        e = plan.experiment
        assert e.patch_size == (32, 48, 32) and e.batch_size == 2
        assert e.augmentation == "none" and not e.amp and e.sliding_window is None
        assert plan.resources.threads == 1 and plan.resources.gpus == 1
        assert demo.launcher(plan.name) == "revunet"
        assert max(e.model_params["channels"]) <= 128
        steps += e.epochs * e.max_steps_per_epoch
    # what keeps the default run within its time budget: Brügger's six rows get the quality
    # bar's 45 x 8 steps, the other ten 10 x 8
    assert steps == 6 * 45 * 8 + 10 * 10 * 8
    assert all(demo.experiments[name].experiment.epochs == 45 for name in NAMES[:6])
    # the paper's loss and architecture stay where the demo does not override them
    assert demo.experiments["bruegger_rev_4_1_full"].experiment.model_params["encoder_depth"] == 4
    assert demo.experiments["bruegger_baseline"].experiment.loss == "bruegger2019"
    assert demo.experiments["invres_iseg_full"].experiment.loss == "invres2020"


def test_vae_branch_follows_the_training_input():
    """``vae_input_size: training_input`` becomes the demo's training crop (or the whole volume without one)."""
    demo = plan_workflow(config())
    assert demo.experiments["invres_iseg_full"].experiment.model_params["vae_input_size"] == [32, 48, 32]
    tiny = merge_config(CONFIG, yaml.safe_load((ROOT / "config" / "test.yaml").read_text(encoding="utf-8")))
    small = plan_workflow({**tiny, "select": ["invres_brats_partial"]})
    assert small.experiments["invres_brats_partial"].experiment.model_params["vae_input_size"] == [32, 48, 32]
    whole_volumes = mutate("datasets.brats.demo.shape", None)  # no crop and no fixed volume shape
    whole_volumes["presets"]["demo"]["experiment"]["patch_size"] = None
    with pytest.raises(ConfigError, match=r"invres_brats_partial\.model_params\.vae_input_size"):
        plan_workflow(whole_volumes)


@pytest.mark.parametrize("preset", ["demo", "paper"])
def test_every_experiment_builds_and_fits_its_volumes(preset, demo, paper):
    """Each model accepts its parameters, and the training patch and the preprocessed volume
    (validated whole) are multiples of what the network halves."""
    plan = demo if preset == "demo" else paper
    for name, item in plan.experiments.items():
        e = item.experiment
        with torch.device("meta"):
            model = build_model(e.model, **e.model_params)
        multiple = model.size_multiple
        shape = plan.datasets[item.dataset].shape
        for size in (e.patch_size or shape, shape):
            assert all(s % multiple == 0 for s in size), (name, size, multiple)


def test_deep_merge_merges_mappings_and_replaces_the_rest():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3]}, "c": None}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": None}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}


def test_workflow_config_reads_its_files_as_documents_merged_in_snakemakes_order(tmp_path):
    """The Snakefile's config: config.yaml, then each --configfile, then --config; `1e-4` is a number."""
    default = tmp_path / "config.yaml"
    default.write_text("preset: demo\npresets: {demo: {experiment: {lr: 1e-3, epochs: 2}}}\nselect: [a]\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text("presets: {demo: {experiment: {lr: 1e-4}}}\nselect: [b]\n")
    merged = read_workflow_config(default, [extra], {"preset": "paper"})
    assert merged == {
        "preset": "paper",
        "presets": {"demo": {"experiment": {"lr": 1e-4, "epochs": 2}}},
        "select": ["b"],
    }
    extra_only = {"presets": {"demo": {"experiment": {"lr": 1e-4}}}, "select": ["b"]}
    assert read_workflow_config(default, [extra], replace=True) == extra_only  # --replace-workflow-config
    assert read_workflow_config(tmp_path / "absent.yaml", [extra]) == extra_only
    assert read_workflow_config(default, replace=True)["select"] == ["a"]  # nothing replaces it


def test_plan_defaults_to_every_memory_table():
    without = config()
    del without["memory_tables"]
    assert plan_workflow(without).memory_tables == MEMORY_TABLES == plan_workflow(config()).memory_tables


def test_select_keeps_only_named_experiments_and_their_datasets():
    plan = plan_workflow(config(select=["invres_iseg_full"]))
    assert list(plan.experiments) == ["invres_iseg_full"] and list(plan.datasets) == ["iseg"]


def mutate(path: str, value):
    changed = config()
    *parents, last = path.split(".")
    node = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return changed


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        (
            mutate("experiments.bruegger_baseline.demo.epoch", 3),
            r"experiments\.bruegger_baseline.*unknown experiment key.*'epoch'",
        ),
        (mutate("experiments.bruegger_baseline.demo.lr", "fast"), r"key 'lr' must be a number"),
        (
            mutate("experiments.pendse_baseline.recipe", "pendse"),
            r"experiments\.pendse_baseline\.recipe: unknown recipe 'pendse'",
        ),
        (
            mutate("experiments.pendse_baseline.demo.split", "other"),
            r"split 'other' is not defined for dataset 'brats'",
        ),
        (mutate("experiments.pendse_baseline.demo.dataset", "brats2018"), r"brats2018.*has no demo: block"),
        (
            mutate("experiments.pendse_baseline.paper", "Pendse"),
            r"experiments\.pendse_baseline\.paper must be a mapping",
        ),
        (mutate("experiments.pendse_baseline.task", "iseg"), r"task 'iseg' does not match dataset 'brats'"),
        (
            mutate("recipes.pendse2020.dataset", "brats"),
            r"recipes\.pendse2020: \['dataset'\] belong in each experiment",
        ),
        (mutate("select", ["nope"]), r"select names unknown experiment\(s\) \['nope'\]"),
        (
            mutate("memory_tables", ["bruegger2019", "nope"]),
            r"config: memory_tables: unknown table\(s\) \['nope'\]; expected names from \['bruegger2019', ",
        ),
        (mutate("memory_tables", "bruegger2019"), r"config: memory_tables must be a list of names from \["),
        (mutate("presets.demo.train.gpu", 1), r"presets\.demo\.train.*unknown resource\(s\) \['gpu'\]"),
        (
            mutate("datasets.brats.demo.splits.main", {"fraction": 0.8, "counts": [1, 1]}),
            r"splits\.main: give exactly one",
        ),
    ],
)
def test_errors_name_the_key(changed, message):
    with pytest.raises(ConfigError, match=message):
        plan_workflow(changed)


def test_relative_dataset_paths_need_a_data_root():
    with pytest.raises(ConfigError, match=r"datasets\.brats2018\.paper\.path: .* data_root must say"):
        plan_workflow(config(preset="paper"))


def test_names_shared_with_other_modules_stay_in_step():
    from revunet.data.synth import generate as synth
    from revunet.report import figures, tables

    assert SYNTHETIC_FOLDERS == {"brats": synth.BRATS_ROOT, "iseg": synth.ISEG_ROOT}
    assert REPORT_TABLES == tuple(tables.TABLE_BUILDERS)
    assert set(REPORT_FIGURES) == set(figures.CAPTIONS) - {"example_segmentation"}


def test_experiment_command_writes_specs_that_read_back(tmp_path, paper):
    spec = paper.experiments["bruegger_baseline"].spec()
    out = tmp_path / "e.json"
    assert main(["experiment", "--spec", spec, "--out", str(out)]) == 0
    read = read_experiment(out)  # weight decay 1e-05 must read back as a number
    assert read == paper.experiments["bruegger_baseline"].experiment and read.weight_decay == 1e-5
    assert json.loads(out.read_text()) == json.loads(spec)

    by_name = tmp_path / "named.json"
    main(["experiment", "--config", str(ROOT / "config.yaml"), "--preset", "paper", "--data-root", "/d",
          "--name", "pendse_mbconv_wider", "--out", str(by_name)])  # fmt: skip
    assert read_experiment(by_name).epochs == 500

    resolved = tmp_path / "config.yaml"
    main(["experiment", "--config", json.dumps(CONFIG), "--out", str(resolved)])
    assert yaml.safe_load(resolved.read_text()) == CONFIG


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--spec", '{"name": "x", "task": "brats"}'], "lacks the required key"),
        (["--spec", '{"name": "x", "task": "brats", "model": "m", "bogus": 1}'], "bogus"),
        (["--spec", "{not json"], "not valid JSON"),
        (["--spec", "missing.json"], "neither inline JSON nor an existing file"),
        (["--config", '{"experiments": {}}'], "no experiments are defined"),
    ],
)
def test_experiment_command_errors(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(["experiment", *argv])


def test_postprocessed_evaluation_covers_the_brats_experiments_with_the_configs_thresholds():
    plan = plan_workflow(config())
    brats = [name for name, entry in plan.experiments.items() if entry.experiment.task == "brats"]
    assert plan.postprocessed_experiments() == brats and len(brats) < len(plan.experiments)
    assert plan.postprocess_options() == "--postprocess --et-min-mm3 500 --min-component-mm3 0"
    changed = plan_workflow(config(postprocessing={"et_min_mm3": 200, "min_component_mm3": 1000.5}))
    assert changed.postprocess_options() == "--postprocess --et-min-mm3 200 --min-component-mm3 1000.5"
    assert plan_workflow(config(postprocessing={"evaluate": False})).postprocessed_experiments() == []

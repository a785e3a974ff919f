"""The Snakemake workflow: lint, dry runs at both presets, config errors, and one tiny run
end to end (tables, figures and report; a rerun does nothing; a deleted model reruns only
what depends on it)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "config.yaml")
TINY = str(ROOT / "config" / "test.yaml")
EXPERIMENTS = [
    "bruegger_baseline", "bruegger_rev_1_1_128", "bruegger_rev_1_1_full", "bruegger_rev_2_1_full",
    "bruegger_rev_3_1_full", "bruegger_rev_4_1_full", "invres_iseg_unet3d", "invres_iseg_partial",
    "invres_iseg_full", "invres_brats_unet3d", "invres_brats_partial", "invres_brats_full",
    "pendse_baseline", "pendse_mbconv_base", "pendse_mbconv_deeper", "pendse_mbconv_wider",
]  # fmt: skip
TINY_EXPERIMENTS = ["bruegger_rev_1_1_128", "invres_iseg_unet3d", "pendse_mbconv_wider"]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("snakemake") is None, reason="snakemake is not installed (pip install -e .)"
)


def snakemake(workdir: Path, *args: str, configfiles: tuple[str, ...] = (CONFIG,), timeout: int = 600):
    """Run the repository's workflow in ``workdir``; returns (exit code, stdout + stderr)."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir)]
    command += ["--configfile", *configfiles, *args]
    # without the environment's bin folder on PATH, as after `bash .ci/setup` in a fresh shell:
    # the workflow itself must find `revunet` next to the Python that runs Snakemake
    bin_folder = Path(sys.executable).parent
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != bin_folder]
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir)
    return done.returncode, done.stdout + done.stderr


def job_counts(output: str) -> dict[str, int]:
    """The 'job count' table a (dry) run prints."""
    counts = {}
    for rule, count in re.findall(r"^(\w+)\s+(\d+)$", output, flags=re.MULTILINE):
        counts[rule] = int(count)
    return counts


def train_jobs(output: str) -> dict[str, str]:
    """exp -> the resources line of each train job a dry run lists."""
    jobs = {}
    for block in output.split("\nrule train:")[1:]:
        block = block.split("\n\n")[0]
        exp = re.search(r"wildcards: exp=(\w+)", block).group(1)
        threads = re.search(r"threads: (\d+)", block)  # Snakemake leaves out threads: 1
        jobs[exp] = re.search(r"resources: (.*)", block).group(1) + f" threads={threads.group(1) if threads else 1}"
    return jobs


@pytest.mark.slow
def test_lint_reports_nothing(tmp_path):
    code, output = snakemake(tmp_path, "--lint")
    assert code == 0, output
    assert "Congratulations, your workflow is in a good condition!" in output
    assert "Lints for" not in output


@pytest.mark.slow
def test_default_dry_run_trains_every_experiment_once(tmp_path):
    code, output = snakemake(tmp_path, "--dry-run")
    assert code == 0, output
    counts = job_counts(output)
    assert counts["train"] == counts["infer"] == counts["evaluate"] == counts["experiment"] == 16
    assert counts["synthetic_dataset"] == 2 and counts["report"] == 1 and counts["memory_table"] == 4
    jobs = train_jobs(output)
    assert sorted(jobs) == sorted(EXPERIMENTS)
    assert all("gpu=1" in line and "threads=1" in line for line in jobs.values())
    assert "revunet synth --task brats --subjects 20" in output


@pytest.mark.slow
def test_paper_dry_run_lists_every_paper_experiment_with_its_gpus(tmp_path):
    data = tmp_path / "data"
    code, output = snakemake(tmp_path, "--dry-run", "--config", "preset=paper", f"data_root={data}")
    assert code == 0, output
    jobs = train_jobs(output)
    assert sorted(jobs) == sorted(EXPERIMENTS)
    for exp, line in jobs.items():
        gpus = 4 if exp.startswith("pendse") else 1
        assert f"gpu={gpus}," in line and "runtime=4320" in line and "threads=8" in line, (exp, line)
    assert "torchrun --standalone --nproc_per_node=4 -m revunet.cli train" in output
    assert f"revunet cases {data}/MICCAI_BraTS_2018_Data_Training" in output
    assert "--counts 329,40" in output and "--shape 160,192,160" in output and "--shape 256,256,160" in output
    assert "--fraction 0.8 --validation 0.1 --seed 0" in output  # Brügger's selection part
    assert "synthetic_dataset" not in job_counts(output)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("config", "names"),
    [
        (["bogus_key=1"], ["bogus_key"]),
        (["preset=huge"], ["preset", "huge"]),
        (["preset=paper"], ["data_root"]),
    ],
)
def test_bad_config_fails_at_start_naming_the_key(tmp_path, config, names):
    code, output = snakemake(tmp_path, "--dry-run", "--config", *config)
    assert code != 0
    for name in names:
        assert name in output
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_config_files_are_read_as_revunet_documents(tmp_path):
    """`lr: 5e-4` in a --configfile is a number (PyYAML, which Snakemake uses, reads a string)."""
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("select: [invres_iseg_unet3d]\nexperiments:\n  invres_iseg_unet3d:\n    demo: {lr: 5e-4}\n")
    target = "results/experiments/invres_iseg_unet3d.json"
    code, output = snakemake(tmp_path, "--dry-run", "-p", target, configfiles=(CONFIG, str(overlay)))
    assert code == 0, output
    assert '"lr": 0.0005' in output


@pytest.mark.slow(300)
def test_tiny_run_end_to_end(tmp_path):
    """One run of config/test.yaml (kept in one test so parallel workers never run it twice)."""
    from revunet.catalog import REPORT_FIGURES, REPORT_TABLE_VIEWS, REPORT_TABLES

    code, output = snakemake(tmp_path, "--cores", "2", configfiles=(CONFIG, TINY), timeout=900)
    assert code == 0, output[-5000:]

    results = tmp_path / "results"
    report = (results / "report.html").read_text(encoding="utf-8", errors="replace")
    for name in REPORT_TABLES:
        assert (results / "tables" / f"{name}.csv").stat().st_size > 0
        assert (results / "tables" / f"{name}.md").stat().st_size > 0
        full = pd.read_csv(results / "tables" / f"{name}.csv")
        for view in REPORT_TABLE_VIEWS.get(name, ()):  # each view: some of the full table's columns
            part = pd.read_csv(results / "tables" / f"{name}.{view}.csv")
            pd.testing.assert_frame_equal(part, full[part.columns])
            assert f"{name}.{view}.csv" in report
    for name in [*REPORT_FIGURES, "example_segmentation_brats", "example_segmentation_iseg"]:
        assert (results / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    for exp in TINY_EXPERIMENTS:
        assert (results / "evaluation" / exp / "summary.csv").is_file()
        assert (results / "logs" / "train" / f"{exp}.log").is_file()
    # The cases that chose best.pt are never the ones reported; without a validation part nothing is chosen.
    for exp in TINY_EXPERIMENTS:
        summary = json.loads((results / "train" / exp / "summary.json").read_text())
        reported = set(pd.read_csv(results / "evaluation" / exp / "metrics.csv")["case_id"])
        assert reported and reported.isdisjoint(summary["validation_cases"]), exp
        selects = exp.startswith("bruegger")
        assert (len(summary["validation_cases"]), summary["selection"]) == (
            (1, "best validation EMA") if selects else (0, "last epoch")
        ), exp
    assert "training_curves.png" in report and "complexity.csv" in report
    # a table file's caption in the report is its Markdown's text
    assert "Peak memory of one training step at the paper" in report
    assert "Reproduced on: synthetic BraTS-like data" in report

    # `snakemake --report` also works by hand, anywhere
    code, output = snakemake(tmp_path, "--report", "elsewhere.html", configfiles=(CONFIG, TINY))
    assert code == 0, output[-3000:]
    assert (tmp_path / "elsewhere.html").stat().st_size > 100_000

    # a rerun has nothing to do
    code, output = snakemake(tmp_path, "--dry-run", configfiles=(CONFIG, TINY))
    assert code == 0 and "Nothing to be done" in output, output[-3000:]

    # deleting one model reruns that model's training, inference and evaluation and the report, nothing else
    (results / "train" / "invres_iseg_unet3d" / "best.pt").unlink()
    code, output = snakemake(tmp_path, "--dry-run", configfiles=(CONFIG, TINY))
    assert code == 0, output[-3000:]
    counts = job_counts(output)
    expected = {"train": 1, "infer": 1, "evaluate": 1, "tables": 1, "figures": 1, "report": 1, "all": 1, "total": 7}
    assert counts == expected, output[-3000:]
    assert "wildcards: exp=invres_iseg_unet3d" in output

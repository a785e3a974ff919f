"""revunet figures: every figure as a valid PNG and PDF, written atomically, with a caption; errors named.

The results tree is the one of ``test_tables.py`` (its fixture builders are imported from there).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from revunet.cli import main
from revunet.report.figures import FigureInputs, parse_examples, write_figures
from revunet.report.figures.examples import centre_slice
from revunet.report.inputs import ReportInputError
from test_tables import results, write_complexity  # noqa: F401  (``results`` is a fixture)

FIXED = (
    "training_curves",
    "dice_distribution",
    "hd95_distribution",
    "memory_vs_paper",
    "memory_vs_depth",
    "memory_modules_bruegger2019",
    "memory_modules_invres_iseg",
    "memory_modules_invres_brats",
    "memory_modules_pendse2020",
)


def figure_inputs(paths: dict[str, Path], **changes) -> FigureInputs:
    values = dict(
        training=paths["train"],
        evaluations=paths["evaluation"],
        memory=paths["memory"],
        predictions=paths["predictions"],
        data_root=paths["data"],
        experiments=paths["experiments"],
    )
    values.update(changes)
    return FigureInputs(**values)


def assert_valid_figure(out: Path, name: str) -> None:
    png, pdf = out / f"{name}.png", out / f"{name}.pdf"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 1000


@pytest.mark.slow
def test_every_figure_is_a_valid_png_and_pdf_with_a_caption(results, tmp_path):  # noqa: F811
    write_complexity(results["memory"] / "complexity.csv")
    out = tmp_path / "figures"
    index = write_figures(figure_inputs(results), out)
    names = [*FIXED, "example_segmentation_brats", "example_segmentation_iseg"]
    assert [file for file, _ in index] == [f"{name}.png" for name in names]
    for name in names:
        assert_valid_figure(out, name)
    written = pd.read_csv(out / "index.csv")
    assert list(written.columns) == ["file", "caption"]
    assert written["caption"].str.len().min() > 30
    brats_caption = written.set_index("file").loc["example_segmentation_brats.png", "caption"]
    # The first held-out case of the best-scoring experiment with predictions on that dataset.
    assert "bruegger_baseline" in brats_caption and "BraTS20_Training_001" in brats_caption
    assert "synthetic BraTS-like" in brats_caption
    assert "invres_iseg_full" in written.set_index("file").loc["example_segmentation_iseg.png", "caption"]
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]
    assert leftovers == []


def test_figures_without_inputs_are_written_and_say_not_run(tmp_path):
    out = tmp_path / "figures"
    index = write_figures(FigureInputs(), out)
    assert [file for file, _ in index] == [f"{name}.png" for name in FIXED]
    for name in FIXED:
        assert_valid_figure(out, name)


def test_centre_slice_goes_through_the_labelled_structure():
    label = np.zeros((8, 8, 20), dtype=np.uint8)
    label[2:5, 2:5, 12:15] = 2
    image = np.ones_like(label, dtype=float)
    assert centre_slice(label, image) == 13
    assert centre_slice(np.zeros_like(label), image) == 10  # no label: the middle of the head


def test_example_prediction_with_undefined_label_values_names_the_file(results, tmp_path):  # noqa: F811
    prediction = results["predictions"] / "bruegger_baseline" / "BraTS20_Training_001.nii.gz"
    image = nib.load(prediction)
    data = np.asarray(image.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, image.affine), prediction)
    with pytest.raises(ReportInputError, match=r"BraTS20_Training_001\.nii\.gz.*\[7\]"):
        write_figures(figure_inputs(results, evaluations=None, training=None, memory=None), tmp_path / "f")


def test_example_choice_and_its_errors(results, tmp_path):  # noqa: F811
    assert parse_examples(["brats=bruegger_baseline"]) == {"brats": "bruegger_baseline"}
    with pytest.raises(ReportInputError, match="DATASET=EXPERIMENT"):
        parse_examples(["brats"])
    light = dict(evaluations=None, training=None, memory=None)
    with pytest.raises(ReportInputError, match="no experiment 'nope'"):
        write_figures(figure_inputs(results, examples={"brats": "nope"}, **light), tmp_path / "f")
    with pytest.raises(ReportInputError, match=r"dataset\(s\) \['mars'\]"):
        write_figures(figure_inputs(results, examples={"mars": "bruegger_baseline"}, **light), tmp_path / "f")
    # An experiment without predictions on that dataset gives a "not run" panel, not an error.
    index = dict(write_figures(figure_inputs(results, examples={"brats": "pendse_baseline"}, **light), tmp_path / "g"))
    assert index["example_segmentation_brats.png"].endswith("not run.")


def test_malformed_log_is_an_error_naming_the_file(results, tmp_path):  # noqa: F811
    (results["train"] / "pendse_baseline" / "log.csv").write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ReportInputError, match=r"pendse_baseline/log\.csv.*train_loss"):
        write_figures(figure_inputs(results, predictions=None, data_root=None), tmp_path / "f")


def test_cli_writes_figures_and_reports_errors(results, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    argv = [
        "figures",
        "--memory",
        str(results["memory"]),
        "--experiments",
        str(results["experiments"]),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert (out / "memory_vs_paper.pdf").is_file() and (out / "index.csv").is_file()
    with pytest.raises(SystemExit, match="revunet figures: --example must read DATASET=EXPERIMENT"):
        main(argv + ["--example", "brats"])


def test_example_defaults_to_the_best_scoring_experiment(results, tmp_path):  # noqa: F811
    """A collapsed short run (empty prediction) must not become the example when a better one exists."""
    import shutil

    shutil.copytree(results["predictions"] / "bruegger_baseline", results["predictions"] / "pendse_baseline")
    for name, dice in (("bruegger_baseline", 0.05), ("pendse_baseline", 0.9)):
        path = results["evaluation"] / name / "metrics.csv"
        pd.read_csv(path).assign(dice=dice).to_csv(path, index=False)
    light = {"training": None, "memory": None}
    index = dict(write_figures(figure_inputs(results, **light), tmp_path / "best"))
    assert "experiment pendse_baseline" in index["example_segmentation_brats.png"]
    index = dict(
        write_figures(figure_inputs(results, examples={"brats": "bruegger_baseline"}, **light), tmp_path / "c")
    )
    assert "experiment bruegger_baseline" in index["example_segmentation_brats.png"]

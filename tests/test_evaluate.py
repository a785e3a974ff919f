"""`revunet evaluate` end to end on synthetic BraTS and iSeg data, the summary, and the errors it must raise."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.cli import main
from revunet.data.case_table import read_case_table
from revunet.evaluation.lesions import LESION_METRIC_NAMES, LESION_PENALTY_MM
from revunet.evaluation.metrics import EMPTY_DISTANCE_MM, METRIC_NAMES, region_scores
from revunet.evaluation.score import METRICS_COLUMNS, SUMMARY_COLUMNS, summarise
from revunet.tasks import TASKS

SPACING_MM = 3.0  # revunet synth's default grid


@pytest.fixture(scope="module")
def brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    assert main(["synth", "--task", "brats", "--subjects", "3", "--out", str(root / "raw")]) == 0
    assert main(["cases", str(root / "raw"), "--out", str(root / "cases.csv")]) == 0
    return root / "cases.csv"


@pytest.fixture(scope="module")
def iseg(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iseg")
    assert main(["synth", "--task", "iseg", "--subjects", "2", "--out", str(root / "raw")]) == 0
    assert main(["cases", str(root / "raw"), "--out", str(root / "cases.csv")]) == 0
    return root / "cases.csv"


def disk_label(cases: Path, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference label file's on-disk values (3-D) and affine."""
    table = read_case_table(cases).set_index("case_id")
    image = nib.load(table.loc[case_id, "label"])
    data = np.asarray(image.dataobj).astype(np.uint8)
    return data.reshape(data.shape[:3]), image.affine


def write_predictions(folder: Path, labels: dict[str, np.ndarray], affines: dict[str, np.ndarray]) -> Path:
    """What `revunet infer` writes: one uint8 NIfTI per case and predictions.csv listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for case_id, label in labels.items():
        nib.save(nib.Nifti1Image(label.astype(np.uint8), affines[case_id]), folder / f"{case_id}.nii.gz")
        rows.append({"case_id": case_id, "prediction": f"{case_id}.nii.gz", "seconds": 0.5})
    pd.DataFrame(rows).to_csv(folder / "predictions.csv", index=False)
    return folder


def evaluate(cases: Path, predictions: Path, out: Path, *extra: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    assert (
        main(
            [
                "evaluate",
                "--cases",
                str(cases),
                "--predictions",
                str(predictions),
                "--out",
                str(out / "metrics.csv"),
                "--summary",
                str(out / "summary.csv"),
                *extra,
            ]
        )
        == 0
    )
    return pd.read_csv(out / "metrics.csv"), pd.read_csv(out / "summary.csv")


@pytest.mark.slow
def test_brats_exact_missing_et_and_shifted(brats, tmp_path, capsys):
    ids = read_case_table(brats)["case_id"].tolist()
    references = {case_id: disk_label(brats, case_id) for case_id in ids}
    exact = references[ids[0]][0]
    no_et = np.where(references[ids[1]][0] == 4, 1, references[ids[1]][0])  # ET called necrosis: TC, WT unchanged
    shifted = np.roll(references[ids[2]][0], 1, axis=0)  # every region moved by one 3 mm voxel
    labels = {ids[0]: exact, ids[1]: no_et, ids[2]: shifted}
    folder = write_predictions(tmp_path / "exp_a", labels, {c: a for c, (_, a) in references.items()})

    metrics, summary = evaluate(brats, folder, tmp_path)
    assert tuple(metrics.columns) == METRICS_COLUMNS
    assert metrics[["case_id", "region"]].values.tolist() == [[c, r] for c in ids for r in ("WT", "TC", "ET")]
    assert set(metrics["experiment"]) == {"exp_a"}  # default: the predictions folder's name
    assert metrics[list(METRIC_NAMES)].notna().all().all()
    scores = metrics.set_index(["case_id", "region"])

    for region in ("WT", "TC", "ET"):
        assert scores.loc[(ids[0], region), list(METRIC_NAMES)].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]
    # Lesion-wise, an exact prediction matches every reference lesion with Dice 1 and HD95 0.
    exact_lesions = scores.loc[ids[0], list(LESION_METRIC_NAMES)]
    assert (exact_lesions["lesion_fp"] == 0).all() and (exact_lesions["lesion_fn"] == 0).all()
    assert (exact_lesions["lesion_tp"] >= 1).all() and (exact_lesions["lesion_score_dice"] == 1.0).all()
    assert (exact_lesions["lesion_score_hd95"] == 0.0).all()
    # A missed enhancing tumour: every ET lesion is a false negative, scored 0 and 374 mm.
    assert scores.loc[
        (ids[1], "ET"), ["lesion_tp", "lesion_fp", "lesion_score_dice", "lesion_score_hd95"]
    ].tolist() == [
        0.0,
        0.0,
        0.0,
        LESION_PENALTY_MM,
    ]
    for region in ("WT", "TC"):
        assert scores.loc[(ids[1], region), "dice"] == 1.0
    assert (references[ids[1]][0] == 4).any()  # the synthetic case has an enhancing tumour to miss
    missed = scores.loc[(ids[1], "ET")]
    assert (missed["dice"], missed["hd95"], missed["hausdorff"], missed["sensitivity"]) == (
        0.0,
        EMPTY_DISTANCE_MM,
        EMPTY_DISTANCE_MM,
        0.0,
    )

    # The shifted case: the spacing (3 mm) reaches the distances, and the regions are BraTS's nested ones.
    assert scores.loc[(ids[2], "WT"), "hausdorff"] == pytest.approx(SPACING_MM)
    expected = TASKS["brats"].region_stack(references[ids[2]][0])
    predicted = TASKS["brats"].region_stack(shifted)
    for index, region in enumerate(("WT", "TC")):
        direct = region_scores(predicted[index], expected[index], (SPACING_MM,) * 3)
        assert scores.loc[(ids[2], region), list(METRIC_NAMES)].tolist() == pytest.approx(list(direct.values()))
        assert 0 < direct["dice"] < 1
    # The third synthetic case has no enhancing tumour, and neither has its shifted copy: both empty.
    assert not expected[2].any()
    assert scores.loc[(ids[2], "ET"), list(METRIC_NAMES)].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]

    assert tuple(summary.columns) == SUMMARY_COLUMNS
    assert summary[["region", "metric"]].values.tolist() == [
        [r, m] for r in ("WT", "TC", "ET", "mean") for m in (*METRIC_NAMES, *LESION_METRIC_NAMES)
    ]
    assert (summary["n"] == 3).all()
    stats = summary.set_index(["region", "metric"])
    et_dice = scores.xs("ET", level="region")["dice"].to_numpy()
    assert stats.loc[("ET", "dice"), "mean"] == pytest.approx(et_dice.mean())
    assert stats.loc[("ET", "dice"), "std"] == pytest.approx(et_dice.std(ddof=1))
    assert stats.loc[("ET", "dice"), "median"] == pytest.approx(np.median(et_dice))
    per_case_mean_hd95 = scores["hd95"].groupby(level="case_id").mean().to_numpy()
    assert stats.loc[("mean", "hd95"), "mean"] == pytest.approx(per_case_mean_hd95.mean())
    assert stats.loc[("mean", "hd95"), "median"] == pytest.approx(np.median(per_case_mean_hd95))

    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("exp_a: 3 cases scored")
    et_line = next(line for line in printed if line.startswith("ET "))
    assert f"{stats.loc[('ET', 'hd95'), 'mean']:.2f} ± {stats.loc[('ET', 'hd95'), 'std']:.2f}" in et_line


@pytest.mark.slow
def test_split_part_and_experiment_name(brats, tmp_path):
    ids = read_case_table(brats)["case_id"].tolist()
    references = {case_id: disk_label(brats, case_id) for case_id in ids}
    folder = write_predictions(
        tmp_path / "preds",
        {c: label for c, (label, _) in references.items()},
        {c: a for c, (_, a) in references.items()},
    )
    split = tmp_path / "split.json"
    split.write_text(
        json.dumps(
            {"format": 2, "seed": 0, "scheme": "fraction:0.67", "train": ids[:2], "validation": [], "test": ids[2:]}
        )
    )
    metrics, summary = evaluate(brats, folder, tmp_path, "--split", str(split), "--experiment", "named")
    assert metrics["case_id"].unique().tolist() == ids[2:]
    assert set(metrics["experiment"]) == set(summary["experiment"]) == {"named"}
    assert (summary["n"] == 1).all() and (summary["std"] == 0).all()
    metrics, _ = evaluate(brats, folder, tmp_path, "--split", str(split), "--part", "train")
    assert metrics["case_id"].unique().tolist() == ids[:2]

    # A case of the requested part without a prediction.
    listing = pd.read_csv(folder / "predictions.csv")
    listing[listing["case_id"] != ids[2]].to_csv(folder / "predictions.csv", index=False)
    with pytest.raises(SystemExit, match=rf"test part have no prediction: \['{ids[2]}'\]"):
        evaluate(brats, folder, tmp_path / "x", "--split", str(split))
    with pytest.raises(SystemExit, match="--part needs --split"):
        evaluate(brats, folder, tmp_path / "x", "--part", "train")


@pytest.mark.slow
def test_iseg_disk_values_and_classes(iseg, tmp_path):
    ids = read_case_table(iseg)["case_id"].tolist()
    references = {case_id: disk_label(iseg, case_id) for case_id in ids}
    assert set(np.unique(references[ids[0]][0])) == {0, 10, 150, 250}
    no_csf = np.where(references[ids[1]][0] == 10, 0, references[ids[1]][0])
    affines = {c: a for c, (_, a) in references.items()}
    folder = write_predictions(tmp_path / "iseg_run", {ids[0]: references[ids[0]][0], ids[1]: no_csf}, affines)
    metrics, summary = evaluate(iseg, folder, tmp_path)
    scores = metrics.set_index(["case_id", "region"])
    assert metrics["region"].tolist() == ["CSF", "GM", "WM"] * 2
    assert (scores.loc[ids[0], "dice"] == 1.0).all() and (scores.loc[ids[0], "hausdorff"] == 0.0).all()
    assert scores.loc[(ids[1], "CSF"), "dice"] == 0.0
    assert scores.loc[(ids[1], "CSF"), "hausdorff"] == EMPTY_DISTANCE_MM
    assert scores.loc[(ids[1], "GM"), "dice"] == scores.loc[(ids[1], "WM"), "dice"] == 1.0
    assert summary["region"].unique().tolist() == ["CSF", "GM", "WM", "mean"]
    # iSeg's tissue classes are not scored lesion-wise: empty columns, no summary rows.
    assert metrics[list(LESION_METRIC_NAMES)].isna().all().all()
    assert set(summary["metric"]) == set(METRIC_NAMES)

    # Canonical classes 1/2/3 are not iSeg's on-disk values: refused, naming the file.
    canonical = {ids[0]: np.searchsorted([0, 10, 150, 250], references[ids[0]][0])}
    bad = write_predictions(tmp_path / "canonical", canonical, affines)
    with pytest.raises(SystemExit, match=rf"{ids[0]}\.nii\.gz holds label values \[1, 2, 3\] that layout iseg"):
        evaluate(iseg, bad, tmp_path / "bad")


@pytest.mark.slow
def test_errors_name_the_case_and_leave_outputs_alone(brats, tmp_path):
    ids = read_case_table(brats)["case_id"].tolist()
    label, affine = disk_label(brats, ids[0])
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.csv").write_text("old\n")

    cropped = write_predictions(tmp_path / "cropped", {ids[0]: label[:-1]}, {ids[0]: affine})
    shape, short = label.shape, (label.shape[0] - 1, *label.shape[1:])
    expected = rf"case {ids[0]}: prediction file .* has shape \({short[0]}, .* has shape \({shape[0]}, "
    with pytest.raises(SystemExit, match=expected):
        evaluate(brats, cropped, out)

    three = write_predictions(tmp_path / "three", {ids[0]: np.where(label == 4, 3, label)}, {ids[0]: affine})
    with pytest.raises(SystemExit, match=rf"three/{ids[0]}\.nii\.gz holds label values \[3\] that layout brats2020"):
        evaluate(brats, three, out)

    moved = affine.copy()
    moved[0, 3] += 3.0
    shifted = write_predictions(tmp_path / "moved", {ids[0]: label}, {ids[0]: moved})
    with pytest.raises(SystemExit, match=rf"case {ids[0]}: .* affine that differs"):
        evaluate(brats, shifted, out)

    stranger = write_predictions(
        tmp_path / "stranger", {"BraTS20_Training_999": label}, {"BraTS20_Training_999": affine}
    )
    with pytest.raises(SystemExit, match=r"\['BraTS20_Training_999'\] in predictions.csv are not in the case table"):
        evaluate(brats, stranger, out)

    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="predictions.csv does not exist"):
        evaluate(brats, tmp_path / "empty", out)

    (cropped / f"{ids[0]}.nii.gz").unlink()
    with pytest.raises(SystemExit, match=rf"case {ids[0]}: prediction file .* does not exist"):
        evaluate(brats, cropped, out)

    assert (out / "metrics.csv").read_text() == "old\n"
    assert sorted(p.name for p in out.iterdir()) == ["metrics.csv"]  # no summary, no temporary files


def test_summarise_by_hand():
    metrics = pd.DataFrame(
        [
            {
                "experiment": "e",
                "case_id": "a",
                "region": "WT",
                "dice": 0.8,
                "hd95": 2.0,
                "hausdorff": 4.0,
                "sensitivity": 0.9,
                "specificity": 1.0,
            },
            {
                "experiment": "e",
                "case_id": "a",
                "region": "ET",
                "dice": 0.0,
                "hd95": EMPTY_DISTANCE_MM,
                "hausdorff": EMPTY_DISTANCE_MM,
                "sensitivity": 0.0,
                "specificity": 1.0,
            },
            {
                "experiment": "e",
                "case_id": "b",
                "region": "WT",
                "dice": 0.6,
                "hd95": 6.0,
                "hausdorff": 8.0,
                "sensitivity": 0.7,
                "specificity": 0.99,
            },
            {
                "experiment": "e",
                "case_id": "b",
                "region": "ET",
                "dice": 1.0,
                "hd95": 0.0,
                "hausdorff": 0.0,
                "sensitivity": 1.0,
                "specificity": 1.0,
            },
        ]
    )
    summary = summarise(metrics).set_index(["region", "metric"])
    assert summary.loc[("WT", "dice"), ["mean", "median", "n"]].tolist() == pytest.approx([0.7, 0.7, 2])
    assert summary.loc[("WT", "dice"), "std"] == pytest.approx(np.std([0.8, 0.6], ddof=1))
    # region "mean": case a (0.8 + 0) / 2 = 0.4, case b (0.6 + 1) / 2 = 0.8
    assert summary.loc[("mean", "dice"), ["mean", "median"]].tolist() == pytest.approx([0.6, 0.6])
    assert summary.loc[("mean", "hd95"), "mean"] == pytest.approx((EMPTY_DISTANCE_MM + 2.0 + 6.0) / 4)
    assert list(dict.fromkeys(summary.index.get_level_values("region"))) == ["WT", "ET", "mean"]


@pytest.mark.slow
def test_postprocess_relabels_a_small_false_et_and_keeps_a_large_one(brats, tmp_path, capsys):
    ids = read_case_table(brats)["case_id"].tolist()
    references = {case_id: disk_label(brats, case_id) for case_id in ids}
    exact = references[ids[0]][0]
    assert (exact == 4).sum() * SPACING_MM**3 >= 100  # a large ET: kept by a 100 mm³ threshold
    no_et = references[ids[2]][0]
    assert not (no_et == 4).any()
    false_et = no_et.copy()
    false_et[tuple(np.argwhere(no_et == 2)[0])] = 4  # one voxel (27 mm³) of ET inside the edema
    affines = {c: a for c, (_, a) in references.items()}
    folder = write_predictions(tmp_path / "run", {ids[0]: exact, ids[2]: false_et}, affines)

    plain, _ = evaluate(brats, folder, tmp_path / "plain")
    fixed, _ = evaluate(brats, folder, tmp_path / "post", "--postprocess", "--et-min-mm3", "100")
    plain, fixed = plain.set_index(["case_id", "region"]), fixed.set_index(["case_id", "region"])
    assert (plain.loc[(ids[2], "ET"), "dice"], plain.loc[(ids[2], "ET"), "lesion_fp"]) == (0.0, 1.0)
    assert (fixed.loc[(ids[2], "ET"), "dice"], fixed.loc[(ids[2], "ET"), "hd95"]) == (1.0, 0.0)
    assert fixed.loc[(ids[2], "ET"), "lesion_score_dice"] == 1.0
    assert fixed.loc[(ids[2], "TC"), "dice"] < 1.0  # the voxel is now necrosis: a false TC voxel
    assert (fixed.loc[ids[0], "dice"] == 1.0).all()  # the large ET is left alone
    assert "after post-processing (ET→NCR below 100 mm³)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="need --postprocess"):
        evaluate(brats, folder, tmp_path / "x", "--et-min-mm3", "100")

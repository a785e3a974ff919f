"""Real dataset layouts: detection, the case table, and loading/validating one case.

Every layout is rebuilt in miniature (8x8x6 volumes) with the file names the real data uses,
so these tests pin down exactly which names are accepted and how labels are converted.
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from revunet.catalog import TASK_MODALITIES
from revunet.cli import main
from revunet.commands.cases import LAYOUT_HELP
from revunet.data.case_table import CaseTableError, case_table_columns, read_case_table, write_case_table
from revunet.data.io import (
    CaseError,
    CaseFileMissing,
    CaseGeometryError,
    CaseIntensityError,
    CaseLabelError,
    CorruptCaseFile,
    load_case,
)
from revunet.data.layouts import LAYOUT_NAMES, LayoutError, detect_layout, find_cases

SHAPE = (8, 8, 6)
AFFINE = np.diag([1.0, 1.0, 1.0, 1.0])
# Each modality's brain voxels hold its own constant, so a mix-up of modalities shows.
BRATS_VALUES = {"t1": 1.0, "t1ce": 2.0, "t2": 3.0, "flair": 4.0}
BRAIN = np.zeros(SHAPE, dtype=bool)
BRAIN[1:7, 1:7, 1:5] = True


def image(value: float) -> np.ndarray:
    data = np.zeros(SHAPE, dtype=np.float32)
    data[BRAIN] = value
    return data


def label_with(values: tuple[int, ...], dtype: type = np.uint8) -> np.ndarray:
    """A label map holding each of ``values`` (the first one is the background)."""
    label = np.full(SHAPE, values[0], dtype=dtype)
    for i, value in enumerate(values[1:]):
        label[2 + i, 2:6, 1:4] = value
    return label


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def junk(folder: Path, name: str) -> None:
    """A macOS resource fork or Finder file: must be ignored."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"\x00\x05\x16\x07 not a volume")


def brats_case(
    folder: Path,
    case: str,
    keys: dict[str, str],
    sep: str = "_",
    label: tuple[int, ...] | None = (0, 1, 2, 4),
    ext: str = ".nii.gz",
    label_name: str | None = None,
) -> None:
    for modality, key in keys.items():
        save(folder / case / f"{case}{sep}{key}{ext}", image(BRATS_VALUES[modality]))
    if label is not None:
        save(folder / case / (label_name or f"{case}{sep}seg{ext}"), label_with(label))


BRATS_KEYS = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
BRATS2023_KEYS = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}
MSD_CHANNEL_ORDER = ("flair", "t1", "t1ce", "t2")  # Decathlon: FLAIR, T1w, T1gd, T2w


def make_brats2018(root: Path) -> Path:
    brats_case(root / "HGG", "Brats18_2013_2_1", BRATS_KEYS)
    brats_case(root / "LGG", "Brats18_2013_0_1", BRATS_KEYS, ext=".nii")
    junk(root / "HGG" / "Brats18_2013_2_1", "._Brats18_2013_2_1_t1.nii.gz")
    junk(root, ".DS_Store")
    return root


def make_brats2020(root: Path) -> Path:
    brats_case(root, "BraTS20_Training_001", BRATS_KEYS)
    brats_case(root, "BraTS20_Training_355", BRATS_KEYS, label_name="W39_1998.09.19_Segm.nii")
    (root / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\nHGG,BraTS20_Training_001\n")
    return root


def make_brats2021(root: Path) -> Path:
    brats_case(root, "BraTS2021_00000", BRATS_KEYS)
    brats_case(root, "BraTS2021_00002", BRATS_KEYS, ext=".nii")
    # one case with .nii and .nii.gz mixed
    brats_case(root, "BraTS2021_00003", {"t1": "t1", "t2": "t2"}, ext=".nii", label=None)
    brats_case(root, "BraTS2021_00003", {"t1ce": "t1ce", "flair": "flair"}, ext=".nii.gz")
    return root


def make_brats2023(root: Path) -> Path:
    brats_case(root, "BraTS-GLI-00000-000", BRATS2023_KEYS, sep="-", label=(0, 1, 2, 3))
    brats_case(root, "BraTS-GLI-00002-000", BRATS2023_KEYS, sep="-", label=(0, 2))
    return root


def make_msd(root: Path) -> Path:
    stacked = np.stack([image(BRATS_VALUES[m]) for m in MSD_CHANNEL_ORDER], axis=-1)
    save(root / "imagesTr" / "BRATS_001.nii.gz", stacked)
    save(root / "labelsTr" / "BRATS_001.nii.gz", label_with((0, 1, 2, 3)))
    save(root / "imagesTr" / "BRATS_002.nii", stacked)
    save(root / "labelsTr" / "BRATS_002.nii.gz", label_with((0, 1)))
    save(root / "imagesTs" / "BRATS_485.nii.gz", stacked)
    junk(root / "imagesTr", "._BRATS_001.nii.gz")
    junk(root / "labelsTr", "._BRATS_001.nii.gz")
    (root / "dataset.json").write_text('{"name": "BRATS"}')
    return root


ISEG_VALUES = {"T1": 100.0, "T2": 200.0}


def make_iseg(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for subject, labelled in (("subject-1", True), ("subject-2", True), ("subject-11", False)):
        for name, value in ISEG_VALUES.items():
            nib.save(nib.AnalyzeImage(image(value)[..., None], AFFINE), root / f"{subject}-{name}.hdr")
        if labelled:
            nib.save(nib.AnalyzeImage(label_with((0, 10, 150, 250))[..., None], AFFINE), root / f"{subject}-label.hdr")
    junk(root, "._subject-1-T1.hdr")
    return root


BUILDERS = {
    "brats2018": (make_brats2018, ["Brats18_2013_0_1", "Brats18_2013_2_1"], 2),
    "brats2020": (make_brats2020, ["BraTS20_Training_001", "BraTS20_Training_355"], 2),
    "brats2021": (make_brats2021, ["BraTS2021_00000", "BraTS2021_00002", "BraTS2021_00003"], 3),
    "brats2023": (make_brats2023, ["BraTS-GLI-00000-000", "BraTS-GLI-00002-000"], 2),
    "msd": (make_msd, ["BRATS_001", "BRATS_002", "BRATS_485"], 2),
    "iseg": (make_iseg, ["subject-1", "subject-11", "subject-2"], 2),
}


def test_builders_cover_every_layout():
    assert set(BUILDERS) == set(LAYOUT_NAMES)
    assert LAYOUT_HELP == ", ".join(("auto", *LAYOUT_NAMES)), "the CLI help must list every layout"


@pytest.mark.parametrize("layout", sorted(BUILDERS))
def test_detect_find_and_load_every_layout(tmp_path, layout):
    build, ids, n_labelled = BUILDERS[layout]
    root = build(tmp_path / layout)
    assert detect_layout(root) == layout
    table = find_cases(root)
    task = "iseg" if layout == "iseg" else "brats"
    assert list(table.columns) == ["case_id", "task", "layout", *TASK_MODALITIES[task], "label"]
    assert table["case_id"].tolist() == ids, "sorted by case id, hidden files ignored"
    assert set(table["task"]) == {task} and set(table["layout"]) == {layout}
    assert (table["label"] != "").sum() == n_labelled
    for column in (*TASK_MODALITIES[task], "label"):
        for cell in table[column]:
            assert cell == "" or Path(cell.split("#")[0]).is_absolute()
    assert table.equals(find_cases(root, layout=layout))

    allowed = {0, 1, 2, 4} if task == "brats" else {0, 1, 2, 3}
    for _, row in table.iterrows():
        case = load_case(row)
        assert case.case_id == row["case_id"] and case.task == task
        assert list(case.images) == list(TASK_MODALITIES[task])
        for modality, array in case.images.items():
            assert array.dtype == np.float32 and array.shape == SHAPE
            expected = ISEG_VALUES[modality.upper()] if task == "iseg" else BRATS_VALUES[modality]
            assert array.max() == expected, f"{modality} read from the wrong file or channel"
        assert case.affine.shape == (4, 4) and case.affine.dtype == np.float64
        assert case.spacing == (1.0, 1.0, 1.0)
        if row["label"]:
            assert case.label is not None and case.label.dtype == np.uint8 and case.label.shape == SHAPE
            assert set(np.unique(case.label).tolist()) <= allowed
            assert case.source_files["label"] == row["label"]
        else:
            assert case.label is None and "label" not in case.source_files


def test_msd_channels_and_labels_are_remapped(tmp_path):
    table = find_cases(make_msd(tmp_path / "Task01_BrainTumour"))
    row = table.set_index("case_id").loc["BRATS_001"]
    path = str(tmp_path / "Task01_BrainTumour" / "imagesTr" / "BRATS_001.nii.gz")
    assert (
        row["t1"] == f"{path}#1"
        and row["t1ce"] == f"{path}#2"
        and row["t2"] == f"{path}#3"
        and row["flair"] == f"{path}#0"
    )
    case = load_case({"case_id": "BRATS_001", **row.to_dict()})
    assert {m: float(a.max()) for m, a in case.images.items()} == BRATS_VALUES
    raw = label_with((0, 1, 2, 3))
    expected = np.select([raw == 1, raw == 2, raw == 3], [2, 1, 4], 0)
    np.testing.assert_array_equal(case.label, expected)  # edema 1->2, non-enhancing 2->1, enhancing 3->4


def test_brats2023_enhancing_tumour_becomes_4(tmp_path):
    table = find_cases(make_brats2023(tmp_path / "gli"))
    case = load_case(table.iloc[0])
    raw = label_with((0, 1, 2, 3))
    np.testing.assert_array_equal(case.label, np.where(raw == 3, 4, raw))
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 4}


def test_iseg_analyze_pairs_labels_and_unlabelled_subject(tmp_path):
    root = make_iseg(tmp_path / "iSeg-2019-Training")
    table = find_cases(root).set_index("case_id")
    assert table.loc["subject-1", "t1"].endswith("subject-1-T1.hdr")
    assert table.loc["subject-11", "label"] == ""
    case = load_case(table.reset_index().iloc[0])
    raw = label_with((0, 10, 150, 250))
    np.testing.assert_array_equal(case.label, np.select([raw == 10, raw == 150, raw == 250], [1, 2, 3], 0))
    assert case.images["t1"].shape == SHAPE, "the trailing singleton axis of iSeg files is squeezed"


def test_brats2020_case_355_odd_label_name_and_unlabelled_validation(tmp_path):
    root = make_brats2020(tmp_path / "train")
    row = find_cases(root).set_index("case_id").loc["BraTS20_Training_355"]
    assert Path(row["label"]).name == "W39_1998.09.19_Segm.nii"
    validation = tmp_path / "MICCAI_BraTS2020_ValidationData"
    brats_case(validation, "BraTS20_Validation_001", BRATS_KEYS, label=None)
    table = find_cases(validation)
    assert detect_layout(validation) == "brats2020" and table["label"].tolist() == [""]
    assert load_case(table.iloc[0]).label is None


def test_mixed_nii_and_nii_gz_in_one_case(tmp_path):
    table = find_cases(make_brats2021(tmp_path / "b21")).set_index("case_id")
    row = table.loc["BraTS2021_00003"]
    assert (
        row["t1"].endswith("_t1.nii") and row["t1ce"].endswith("_t1ce.nii.gz") and row["label"].endswith("_seg.nii.gz")
    )


def test_hidden_files_are_ignored(tmp_path):
    root = make_brats2018(tmp_path / "b18")
    junk(root / "LGG", "._Brats18_2013_0_1")
    (root / "__MACOSX").mkdir()
    row = find_cases(root).set_index("case_id").loc["Brats18_2013_2_1"]
    assert not Path(row["t1"]).name.startswith("._")


def test_wrapper_folder_is_looked_into(tmp_path):
    make_msd(tmp_path / "download" / "Task01_BrainTumour")
    (tmp_path / "download" / "Task01_BrainTumour.tar").write_bytes(b"")
    assert detect_layout(tmp_path / "download") == "msd"
    assert len(find_cases(tmp_path / "download")) == 3


# --------------------------------------------------------------------------- folder errors


def test_empty_folder(tmp_path):
    with pytest.raises(LayoutError, match="is empty") as error:
        detect_layout(tmp_path)
    for name in LAYOUT_NAMES:
        assert name in str(error.value)


def test_unrecognised_folder_says_what_it_expected_and_found(tmp_path):
    (tmp_path / "patient1").mkdir()
    (tmp_path / "patient2").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError) as error:
        find_cases(tmp_path)
    message = str(error.value)
    assert "BraTS20_Training_001/BraTS20_Training_001_flair.nii.gz" in message
    assert "imagesTr/BRATS_001.nii.gz" in message and "subject-1-T1.hdr" in message
    assert "HGG/Brats18_2013_2_1/Brats18_2013_2_1_t1.nii.gz" in message
    assert "patient1/" in message and "notes.txt" in message
    with pytest.raises(LayoutError, match="looked for layout iseg"):
        find_cases(tmp_path, layout="iseg")
    with pytest.raises(LayoutError, match="unknown layout 'brats2019'"):
        find_cases(tmp_path, layout="brats2019")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_cases(tmp_path / "nowhere")


def test_missing_modality_names_case_modality_and_file(tmp_path):
    root = make_brats2021(tmp_path / "b21")
    (root / "BraTS2021_00002" / "BraTS2021_00002_t1ce.nii").unlink()
    with pytest.raises(LayoutError, match=r"case BraTS2021_00002: no t1ce file in .*BraTS2021_00002_t1ce\.nii\.gz"):
        find_cases(root)


def test_missing_iseg_image_and_msd_label(tmp_path):
    iseg = make_iseg(tmp_path / "iseg")
    (iseg / "subject-2-T2.img").unlink()
    with pytest.raises(LayoutError, match=r"case subject-2: t2 header .*subject-2-T2\.hdr has no data file"):
        find_cases(iseg)
    (iseg / "subject-2-T2.hdr").unlink()
    with pytest.raises(LayoutError, match=r"case subject-2: no t2 file .*subject-2-T2\.hdr"):
        find_cases(iseg)
    msd = make_msd(tmp_path / "msd")
    (msd / "labelsTr" / "BRATS_002.nii.gz").unlink()
    with pytest.raises(LayoutError, match=r"case BRATS_002: no label file .*labelsTr/BRATS_002\.nii\.gz"):
        find_cases(msd)


def test_duplicate_case_ids_and_ambiguous_folders(tmp_path):
    root = make_brats2018(tmp_path / "b18")
    brats_case(root / "LGG", "Brats18_2013_2_1", BRATS_KEYS)
    with pytest.raises(LayoutError, match="case id Brats18_2013_2_1 occurs 2 times"):
        find_cases(root)
    brats_case(root, "BraTS2021_00000", BRATS_KEYS)
    with pytest.raises(LayoutError, match=r"several layouts \(brats2018, brats2021\)"):
        detect_layout(root)


def test_several_files_for_one_modality(tmp_path):
    root = make_brats2021(tmp_path / "b21")
    save(root / "BraTS2021_00000" / "BraTS2021_00000_t1.nii", image(1.0))
    with pytest.raises(LayoutError, match="case BraTS2021_00000: several t1 files"):
        find_cases(root)


# --------------------------------------------------------------------------- bad cases


@pytest.fixture
def brats_row(tmp_path) -> dict[str, str]:
    root = make_brats2020(tmp_path / "b20")
    return find_cases(root).iloc[0].to_dict()


def assert_names(error: pytest.ExceptionInfo, case_id: str, path: str) -> str:
    message = str(error.value)
    assert f"case {case_id}" in message and path in message, message
    assert isinstance(error.value, CaseError) and error.value.case_id == case_id
    return message


def test_missing_file(brats_row):
    Path(brats_row["t2"]).unlink()
    with pytest.raises(CaseFileMissing) as error:
        load_case(brats_row)
    assert isinstance(error.value, FileNotFoundError)
    assert "does not exist" in assert_names(error, "BraTS20_Training_001", brats_row["t2"])


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_truncated_file(tmp_path, brats_row, suffix):
    path = Path(brats_row["flair"])
    if suffix == ".nii":
        path = path.with_name(path.name.replace(".nii.gz", ".nii"))
        path.write_bytes(gzip.decompress(Path(brats_row["flair"]).read_bytes()))
        brats_row["flair"] = str(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptCaseFile) as error:
        load_case(brats_row)
    assert "cannot read flair file" in assert_names(error, "BraTS20_Training_001", str(path))


def test_not_a_volume(brats_row):
    Path(brats_row["t1"]).write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(CorruptCaseFile) as error:
        load_case(brats_row)
    assert_names(error, "BraTS20_Training_001", brats_row["t1"])


def test_missing_analyze_image_file(tmp_path):
    row = find_cases(make_iseg(tmp_path / "iseg")).iloc[0].to_dict()
    Path(row["t2"]).with_suffix(".img").unlink()
    with pytest.raises(CaseFileMissing) as error:
        load_case(row)
    assert ".img" in assert_names(error, "subject-1", row["t2"])


def test_modalities_of_different_shapes(brats_row):
    save(Path(brats_row["t2"]), np.ones((8, 8, 5), dtype=np.float32))
    with pytest.raises(CaseGeometryError) as error:
        load_case(brats_row)
    message = assert_names(error, "BraTS20_Training_001", brats_row["t2"])
    assert "(8, 8, 5)" in message and "(8, 8, 6)" in message and brats_row["t1"] in message


def test_modalities_with_different_affines(brats_row):
    shifted = AFFINE.copy()
    shifted[0, 3] = 0.5
    save(Path(brats_row["flair"]), image(4.0), shifted)
    with pytest.raises(CaseGeometryError, match="affine") as error:
        load_case(brats_row)
    assert_names(error, "BraTS20_Training_001", brats_row["flair"])
    tiny = AFFINE.copy()
    tiny[0, 3] = 1e-5
    save(Path(brats_row["flair"]), image(4.0), tiny)
    load_case(brats_row)  # within tolerance


def test_label_of_another_shape(brats_row):
    save(Path(brats_row["label"]), np.zeros((8, 8, 7), dtype=np.uint8))
    with pytest.raises(CaseGeometryError) as error:
        load_case(brats_row)
    assert "(8, 8, 7)" in assert_names(error, "BraTS20_Training_001", brats_row["label"])


def test_nan_and_inf_voxels_are_counted(brats_row):
    data = image(2.0)
    data[0, 0, 0] = np.nan
    data[0, 0, 1] = np.nan
    data[0, 0, 2] = np.inf
    save(Path(brats_row["t1ce"]), data)
    with pytest.raises(CaseIntensityError) as error:
        load_case(brats_row)
    assert "3 non-finite voxels (2 NaN, 1 Inf)" in assert_names(error, "BraTS20_Training_001", brats_row["t1ce"])


def test_all_zero_image(brats_row):
    save(Path(brats_row["t1"]), np.zeros(SHAPE, dtype=np.float32))
    with pytest.raises(CaseIntensityError) as error:
        load_case(brats_row)
    assert "all zero" in assert_names(error, "BraTS20_Training_001", brats_row["t1"])


@pytest.mark.parametrize(
    ("values", "dtype", "expected"),
    [((0, 1, 3), np.uint8, r"unexpected label values \[3\]"), ((0.0, 1.5), np.float32, "non-integer")],
)
def test_unexpected_label_values(brats_row, values, dtype, expected):
    save(Path(brats_row["label"]), label_with(values, dtype))
    with pytest.raises(CaseLabelError, match=expected) as error:
        load_case(brats_row)
    assert_names(error, "BraTS20_Training_001", brats_row["label"])


def test_float_labels_with_integer_values_are_accepted(brats_row):
    save(Path(brats_row["label"]), label_with((0, 1, 2, 4), np.float32))
    assert set(np.unique(load_case(brats_row).label).tolist()) == {0, 1, 2, 4}


def test_msd_label_values_are_checked_against_the_msd_convention(tmp_path):
    root = make_msd(tmp_path / "msd")
    save(root / "labelsTr" / "BRATS_002.nii.gz", label_with((0, 4)))  # 4 is not a Decathlon label
    row = find_cases(root).set_index("case_id").loc["BRATS_002"].to_dict()
    with pytest.raises(CaseLabelError, match=r"unexpected label values \[4\].*layout msd|layout msd.*\[4\]") as error:
        load_case({"case_id": "BRATS_002", **row})
    assert_names(error, "BRATS_002", row["label"])


def test_msd_image_with_too_few_channels(tmp_path):
    root = make_msd(tmp_path / "msd")
    save(root / "imagesTr" / "BRATS_001.nii.gz", np.stack([image(1.0)] * 2, axis=-1))
    row = find_cases(root).iloc[0].to_dict()
    with pytest.raises(
        CaseGeometryError, match=r"shape \(8, 8, 6, 2\); expected a 4-D volume with at least 3 channels"
    ) as error:
        load_case(row)
    assert_names(error, "BRATS_001", "BRATS_001.nii.gz")


def test_row_with_wrong_task_or_layout(brats_row):
    with pytest.raises(CaseError, match="task 'iseg' does not match layout 'brats2020'"):
        load_case({**brats_row, "task": "iseg"})
    with pytest.raises(CaseError, match="unknown layout 'brats1999'"):
        load_case({**brats_row, "layout": "brats1999"})


# --------------------------------------------------------------------------- the case table on disk


def test_case_table_round_trip(tmp_path):
    table = find_cases(make_msd(tmp_path / "msd"))
    path = write_case_table(table, tmp_path / "tables" / "cases.csv")
    assert not list(path.parent.glob(".*.tmp")), "atomic write leaves no temporary file"
    back = read_case_table(path)
    assert back.equals(table)
    assert back.loc[back["case_id"] == "BRATS_485", "label"].item() == ""


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.drop(columns="flair"), r"missing column\(s\) \['flair'\]"),
        (lambda t: t.assign(grade="HGG"), r"unknown column\(s\) \['grade'\]"),
        (lambda t: t.drop(columns="task"), "no 'task' column"),
        (lambda t: t.assign(task="ct"), "expected a single task"),
        (lambda t: t.iloc[[0, 0]], "duplicate case id"),
        (lambda t: t.assign(t1=""), "empty 't1'"),
        (lambda t: t.assign(layout="iseg"), r"layout\(s\) \['iseg'\] are not brats layouts"),
    ],
)
def test_read_case_table_rejects_bad_columns(tmp_path, edit, message):
    table = find_cases(make_brats2023(tmp_path / "b23"))
    path = tmp_path / "bad.csv"
    edit(table).to_csv(path, index=False)
    with pytest.raises(CaseTableError, match=message) as error:
        read_case_table(path)
    assert str(path) in str(error.value)
    with pytest.raises(CaseTableError):
        write_case_table(edit(table), tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()


def test_case_table_columns():
    assert case_table_columns("iseg") == ["case_id", "task", "layout", "t1", "t2", "label"]
    with pytest.raises(CaseTableError, match="unknown task"):
        case_table_columns("ct")


# --------------------------------------------------------------------------- CLI


def test_cases_command_writes_table_and_summary(tmp_path, capsys):
    root = make_brats2018(tmp_path / "MICCAI_BraTS_2018_Data_Training")
    out = tmp_path / "cases.csv"
    assert main(["cases", str(root), "--out", str(out)]) == 0
    assert read_case_table(out)["case_id"].tolist() == ["Brats18_2013_0_1", "Brats18_2013_2_1"]
    summary = capsys.readouterr().out.strip()
    assert summary.startswith("brats2018: 2 cases (2 labelled, 0 unlabelled)") and len(summary.splitlines()) == 1


def test_cases_command_bad_folder_exits_with_message(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "scan.dcm").write_bytes(b"")
    with pytest.raises(SystemExit) as error:
        main(["cases", str(tmp_path / "random"), "--out", str(tmp_path / "cases.csv")])
    assert "found no dataset" in str(error.value.code) and "scan.dcm" in str(error.value.code)
    with pytest.raises(SystemExit, match="unknown layout 'nope'"):
        main(["cases", str(tmp_path / "random"), "--layout", "nope", "--out", str(tmp_path / "cases.csv")])
    assert not (tmp_path / "cases.csv").exists()


def test_cases_check_reports_broken_case_and_checks_the_others(tmp_path, capsys):
    root = make_brats2021(tmp_path / "b21")
    broken = root / "BraTS2021_00002" / "BraTS2021_00002_t2.nii"
    broken.write_bytes(broken.read_bytes()[:200])
    assert main(["cases", str(root), "--out", str(tmp_path / "c.csv"), "--check"]) == 1
    captured = capsys.readouterr()
    assert re.search(r"case BraTS2021_00002: cannot read t2 file .*BraTS2021_00002_t2\.nii", captured.err)
    assert "checked 3 cases: 2 readable, 1 broken" in captured.out
    assert len(pd.read_csv(tmp_path / "c.csv")) == 3

"""`revunet synth --layout`: the synthetic BraTS subjects in the BraTS 2018 release's layout, read by its reader."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from revunet.cli import main
from revunet.data.layouts import detect_layout, find_cases
from revunet.data.synth.generate import write_dataset

SPACING = 8.0


def test_brats2018_layout_holds_the_brats2020_subjects_as_hgg_lgg_nii_cases(tmp_path):
    old = write_dataset("brats", tmp_path, 4, SPACING)
    new = write_dataset(None, tmp_path, 4, SPACING, layout="brats2018")
    assert (old.root.name, new.root.name) == ("MICCAI_BraTS2020_TrainingData", "MICCAI_BraTS_2018_Data_Training")
    assert detect_layout(new.root) == "brats2018"
    table = find_cases(new.root)
    assert len(table) == 4 and set(table["layout"]) == {"brats2018"}
    groups = {path.split("/")[-3] for path in table["label"]}
    assert groups == {"HGG", "LGG"}  # each case under its grade, both present at four subjects
    assert all(path.endswith(".nii") for column in ("t1", "t1ce", "t2", "flair", "label") for path in table[column])
    for index in range(4):
        case_2018 = table.loc[table["case_id"] == f"Brats18_SYN_{index + 1:03d}_1"].iloc[0]
        stem_2020 = old.root / f"BraTS20_Training_{index + 1:03d}" / f"BraTS20_Training_{index + 1:03d}"
        for role, column in (("flair", "flair"), ("seg", "label")):
            got = nib.load(case_2018[column])
            want = nib.load(f"{stem_2020}_{role}.nii.gz")
            assert np.array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj)), (index, role)
            assert np.array_equal(got.affine, want.affine)


def test_layouts_have_their_own_manifests_and_reruns_change_nothing(tmp_path):
    first = write_dataset(None, tmp_path, 2, SPACING, layout="brats2018")
    manifest = json.loads((first.root / "synth_manifest.json").read_text())
    assert manifest["settings"]["layout"] == "brats2018"
    again = write_dataset("brats", tmp_path, 2, SPACING, layout="brats2018")
    assert first.generated and not again.generated
    default = write_dataset("brats", tmp_path, 2, SPACING)
    assert "layout" not in json.loads((default.root / "synth_manifest.json").read_text())["settings"]


def test_bad_layouts_are_named(tmp_path, capsys):
    with pytest.raises(
        ValueError, match=r"layout must be one of \['brats2018', 'brats2020', 'iseg'\], got 'brats2019'"
    ):
        write_dataset("brats", tmp_path, 1, SPACING, layout="brats2019")
    with pytest.raises(SystemExit, match="layout 'iseg' writes iseg data, but the task is 'brats'"):
        main(["synth", "--task", "brats", "--layout", "iseg", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="give --task or --layout"):
        main(["synth", "--out", str(tmp_path)])
    assert list(tmp_path.iterdir()) == []

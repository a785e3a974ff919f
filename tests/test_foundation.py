"""Tests of the package's shared foundations: tasks, devices, documents, the catalog, sizing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from revunet import catalog
from revunet.devices import DeviceError, resolve_device
from revunet.documents import DocumentError, parse_document, read_document
from revunet.models.sizing import pad_to_multiple, padded_shape
from revunet.tasks import TASKS, get_task, label_from_regions


def test_tasks_follow_the_catalog():
    assert tuple(TASKS) == catalog.TASK_NAMES
    for name, task in TASKS.items():
        assert task.modalities == catalog.TASK_MODALITIES[name]
        assert task.regions == catalog.TASK_REGIONS[name]
        assert task.output == catalog.TASK_OUTPUTS[name]
    assert (TASKS["brats"].in_channels, TASKS["brats"].out_channels) == (4, 3)
    assert (TASKS["iseg"].in_channels, TASKS["iseg"].out_channels) == (2, 4)


def test_brats_regions_are_nested_and_iseg_regions_are_classes():
    label = np.array([0, 1, 2, 4])
    wt, tc, et = TASKS["brats"].region_stack(label)
    assert wt.tolist() == [False, True, True, True]
    assert tc.tolist() == [False, True, False, True]
    assert et.tolist() == [False, False, False, True]
    masks = TASKS["iseg"].region_masks(torch.tensor([0, 1, 2, 3]))
    assert {name: mask.tolist() for name, mask in masks.items()} == {
        "CSF": [False, True, False, False],
        "GM": [False, False, True, False],
        "WM": [False, False, False, True],
    }


def test_targets_have_the_losses_shapes_and_types():
    batch = torch.tensor([[[[0, 1], [2, 4]]]])  # (B=1, 1, 2, 2)
    brats = TASKS["brats"].targets(batch)
    assert brats.shape == (1, 3, 1, 2, 2) and brats.dtype == torch.float32
    assert TASKS["brats"].targets(batch[0]).shape == (3, 1, 2, 2)
    iseg = TASKS["iseg"].targets(batch.clamp(max=3))
    assert iseg.dtype == torch.int64 and torch.equal(iseg, batch.clamp(max=3))


def test_labels_from_probabilities_use_the_overwrite_order_and_argmax():
    # One voxel where only ET is above 0.5: it is enhancing tumour even though TC missed it.
    probabilities = np.zeros((3, 1, 1, 2))
    probabilities[:, 0, 0, 0] = (0.9, 0.2, 0.7)
    assert TASKS["brats"].labels_from_probabilities(probabilities)[0, 0].tolist() == [4, 0]
    classes = np.zeros((4, 1, 1, 2))
    classes[2, 0, 0, 0] = classes[3, 0, 0, 1] = 1.0
    assert TASKS["iseg"].labels_from_probabilities(classes)[0, 0].tolist() == [2, 3]
    with pytest.raises(ValueError, match=r"brats: expected probabilities of shape \(3, x, y, z\)"):
        TASKS["brats"].labels_from_probabilities(classes)
    with pytest.raises(ValueError, match="expected 3 region masks"):
        label_from_regions(np.zeros((2, 1), dtype=bool))


def test_an_unknown_task_is_an_error_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown task 'brain'; expected one of \['brats', 'iseg'\]"):
        get_task("brain")


def test_devices_resolve_or_refuse():
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        for name in ("cuda", "cuda:1"):
            with pytest.raises(DeviceError, match=f"--device {name} was asked for but torch sees no CUDA device"):
                resolve_device(name)
    with pytest.raises(DeviceError, match="device must be one of auto, cpu, cuda, cuda:N; got 'gpu'"):
        resolve_device("gpu")


def test_documents_read_yaml_1_2_numbers(tmp_path):
    value = parse_document("lr: 1e-4\nwd: 1E-5\nf: .5\nn: 3\nneg: -2e3\ns: '1e-4'\nflag: true\n", "x.yaml")
    assert value == {"lr": 1e-4, "wd": 1e-5, "f": 0.5, "n": 3, "neg": -2000.0, "s": "1e-4", "flag": True}
    assert isinstance(value["n"], int)
    assert parse_document('{"lr": 1e-05}', "x.json") == {"lr": 1e-05}
    path = tmp_path / "bad.yaml"
    path.write_text("a: [1, 2\n", encoding="utf-8")
    with pytest.raises(DocumentError, match=f"{path}: not valid YAML/JSON"):
        read_document(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_document(tmp_path / "missing.yaml")


def test_padding_reaches_the_next_multiple_at_the_far_end():
    assert padded_shape((5, 8, 9), 4) == (8, 8, 12)
    tensor = torch.ones(1, 2, 5, 8, 9)
    padded = pad_to_multiple(tensor, 4)
    assert padded.shape == (1, 2, 8, 8, 12)
    assert torch.equal(padded[..., :5, :8, :9], tensor) and padded.sum() == tensor.sum()

"""The patch dataset and augmentation: shapes, patch positions, padding, determinism across
workers, and the geometric promises of the augmentation (labels keep their values, flips
move image and label together, in-plane warps never mix axial slices)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from revunet.catalog import TASK_MODALITIES
from revunet.data.augment import (
    PRESETS,
    Augmentation,
    AugmentationConfig,
    in_plane_grid,
    warp_slices,
)
from revunet.data.dataset import PatchDataset, sample_patch_start
from revunet.data.preprocess import PreprocessedCase, PreprocessMeta, save_preprocessed
from revunet.tasks import get_task

SHAPE = (24, 28, 20)


def store(directory, case_id: str, image: np.ndarray, label: np.ndarray | None, task: str = "brats") -> None:
    """Save arrays as a preprocessed case (identity geometry)."""
    shape = tuple(image.shape[1:])
    modalities = TASK_MODALITIES[task]
    assert image.shape[0] == len(modalities)
    meta = PreprocessMeta(
        case_id=case_id,
        task=task,
        modalities=modalities,
        original_shape=shape,
        affine=np.eye(4).tolist(),
        spacing=(1.0, 1.0, 1.0),
        bbox_start=(0, 0, 0),
        bbox_stop=shape,
        offset=(0, 0, 0),
        target_shape=None,
        shape=shape,
        source_files={},
        zscore_mean={m: 0.0 for m in modalities},
        zscore_std={m: 1.0 for m in modalities},
        has_label=label is not None,
    )
    save_preprocessed(directory, PreprocessedCase(image.astype(np.float32), label, meta))


def coordinate_case(shape=SHAPE, channels: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Channel 0 encodes each voxel's position (x*10000 + y*100 + z + 1); the label is a brain box."""
    x, y, z = np.meshgrid(*(np.arange(s) for s in shape), indexing="ij")
    code = (x * 10000 + y * 100 + z + 1).astype(np.float32)
    image = np.stack([code] + [np.full(shape, c + 1.0, dtype=np.float32) for c in range(1, channels)])
    label = np.zeros(shape, dtype=np.uint8)
    label[4:-4, 4:-4, 3:-3] = 2
    label[8:-8, 8:-8, 6:-6] = 4
    return image, label


def decode(value: float) -> tuple[int, int, int]:
    value = round(value) - 1
    return value // 10000, (value // 100) % 100, value % 100


def blob_case(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An asymmetric 'brain' whose bright off-centre blob is exactly the label 1 region."""
    rng = np.random.default_rng(seed)
    image = np.zeros((4, *shape), dtype=np.float32)
    image[:, 2:-2, 3:-3, 2:-2] = rng.normal(0, 0.05, size=(4, shape[0] - 4, shape[1] - 6, shape[2] - 4))
    image[:, 2:-2, 3:-3, 2:-2] -= 1.0
    label = np.zeros(shape, dtype=np.uint8)
    label[4:12, 6:13, 3:9] = 1
    image[:, label == 1] = 2.0
    return image, label


# --------------------------------------------------------------------------- targets


def test_task_targets():
    label = torch.tensor([[[0, 1, 2, 4]]], dtype=torch.int64)
    regions = get_task("brats").targets(label)
    assert regions.shape == (3, 1, 1, 4) and regions.dtype == torch.float32
    assert regions[:, 0, 0].tolist() == [[0, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 1]]  # WT, TC, ET
    batch = get_task("brats").targets(torch.zeros(2, 3, 4, 5, dtype=torch.int64))
    assert batch.shape == (2, 3, 3, 4, 5)
    classes = get_task("iseg").targets(np.array([[[0, 1, 2, 3]]], dtype=np.uint8))
    assert classes.dtype == torch.int64 and classes.tolist() == [[[0, 1, 2, 3]]]
    with pytest.raises(ValueError, match="unknown task"):
        get_task("liver").targets(label)


# --------------------------------------------------------------------------- patches


def test_full_volume_mode(tmp_path):
    image, label = coordinate_case()
    store(tmp_path, "a", image, label)
    dataset = PatchDataset(tmp_path, ["a"], patch_size=None, samples_per_volume=2)
    assert len(dataset) == 2 and dataset.task == "brats" and dataset.channels == 4
    item = dataset[1]
    assert item["case_id"] == "a"
    assert item["image"].dtype == torch.float32 and item["label"].dtype == torch.int64
    np.testing.assert_array_equal(item["image"].numpy(), image)
    np.testing.assert_array_equal(item["label"].numpy(), label)
    item["image"].zero_()  # the caller may scribble on items; the next one is intact
    np.testing.assert_array_equal(dataset[-1]["image"].numpy(), image)
    with pytest.raises(IndexError):
        dataset[2]


def test_patches_are_windows_at_uniform_positions(tmp_path):
    image, label = coordinate_case()
    store(tmp_path, "a", image, label)
    patch = (8, 10, 6)
    dataset = PatchDataset(tmp_path, ["a"], patch_size=patch, samples_per_volume=300, seed=4, cache_size=1)
    starts = []
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["image"].shape == (4, *patch) and item["label"].shape == patch
        start = decode(item["image"][0, 0, 0, 0].item())
        window = tuple(slice(s, s + p) for s, p in zip(start, patch))
        np.testing.assert_array_equal(item["image"].numpy(), image[(slice(None), *window)])
        np.testing.assert_array_equal(item["label"].numpy(), label[window])
        starts.append(start)
    starts = np.array(starts)
    # Every valid start along each axis can occur, and nothing beyond.
    for axis, (size, p) in enumerate(zip(SHAPE, patch)):
        assert starts[:, axis].min() == 0 and starts[:, axis].max() == size - p
        assert len(set(starts[:, axis])) == size - p + 1


def test_small_volumes_are_centred_and_zero_padded(tmp_path):
    small = (6, 28, 4)
    image, label = coordinate_case(small)
    store(tmp_path, "a", image, label)
    item = PatchDataset(tmp_path, ["a"], patch_size=(10, 10, 8), seed=1)[0]
    patch_image, patch_label = item["image"].numpy(), item["label"].numpy()
    # x: 6 voxels centred in 10 (2 zeros each side); z: 4 in 8 (2 each side); y: a real window.
    assert not patch_image[:, :2].any() and not patch_image[:, 8:].any()
    assert not patch_image[:, :, :, :2].any() and not patch_image[:, :, :, 6:].any()
    assert not patch_label[:2].any() and not patch_label[8:].any()
    assert decode(patch_image[0, 2, 0, 2])[0::2] == (0, 0)
    inner = patch_image[0, 2:8, :, 2:6]
    y0 = decode(inner[0, 0, 0])[1]
    np.testing.assert_array_equal(inner, image[0, :, y0 : y0 + 10, :])
    assert sample_patch_start((6, 28, 4), (10, 10, 8), np.random.default_rng(0))[0::2] == (-2, -2)


def test_items_depend_only_on_seed_epoch_and_index(tmp_path):
    image, label = blob_case()
    store(tmp_path, "a", image, label)
    augment = Augmentation(AugmentationConfig.bruegger2019())
    dataset = PatchDataset(tmp_path, ["a"], patch_size=(12, 12, 8), augment=augment, samples_per_volume=4, seed=7)
    first = dataset[2]
    torch.manual_seed(123)
    np.random.seed(5)
    again = dataset[2]
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    assert not torch.equal(dataset[1]["image"], first["image"])
    same = PatchDataset(tmp_path, ["a"], patch_size=(12, 12, 8), augment=augment, samples_per_volume=4, seed=7)
    assert torch.equal(same[2]["image"], first["image"])
    other_seed = PatchDataset(tmp_path, ["a"], patch_size=(12, 12, 8), augment=augment, samples_per_volume=4, seed=8)
    assert not torch.equal(other_seed[2]["image"], first["image"])
    dataset.set_epoch(1)
    assert not torch.equal(dataset[2]["image"], first["image"])
    dataset.set_epoch(0)
    assert torch.equal(dataset[2]["image"], first["image"])


def _collect(dataset: PatchDataset, workers: int) -> list[dict]:
    loader = DataLoader(dataset, batch_size=2, shuffle=False, num_workers=workers)
    return [batch for batch in loader]


def test_workers_give_the_same_samples(tmp_path):
    for number, case_id in enumerate(("a", "b")):
        image, label = blob_case(seed=number)
        store(tmp_path, case_id, image, label)
    augment = Augmentation(AugmentationConfig.bruegger2019())
    dataset = PatchDataset(tmp_path, ["a", "b"], patch_size=(12, 14, 8), augment=augment, samples_per_volume=3, seed=3)
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        serial, parallel = _collect(dataset, 0), _collect(dataset, 2)
        assert len(serial) == len(parallel) == 3
        for one, two in zip(serial, parallel):
            assert one["case_id"] == two["case_id"]
            assert torch.equal(one["image"], two["image"]) and torch.equal(one["label"], two["label"])
        if epoch == 0:
            epoch0 = serial
    assert not torch.equal(epoch0[0]["image"], serial[0]["image"])


def test_dataset_errors(tmp_path):
    image, label = coordinate_case()
    store(tmp_path, "labelled", image, label)
    store(tmp_path, "unlabelled", image, None)
    store(tmp_path, "iseg", image[:2], label.clip(0, 3), task="iseg")
    with pytest.raises(ValueError, match="case unlabelled has no label"):
        PatchDataset(tmp_path, ["labelled", "unlabelled"])
    with pytest.raises(ValueError, match="mix tasks"):
        PatchDataset(tmp_path, ["labelled", "iseg"])
    with pytest.raises(FileNotFoundError, match="revunet preprocess"):
        PatchDataset(tmp_path, ["nope"])
    with pytest.raises(ValueError, match="patch_size"):
        PatchDataset(tmp_path, ["labelled"], patch_size=(8, 8))
    with pytest.raises(ValueError, match="at least one case"):
        PatchDataset(tmp_path, [])
    assert PatchDataset(tmp_path, ["iseg"], patch_size=(4, 4, 4))[0]["image"].shape == (2, 4, 4, 4)


# --------------------------------------------------------------------------- augmentation


def test_presets_and_validation():
    for name in PRESETS:
        assert AugmentationConfig.preset(name) == getattr(AugmentationConfig, name)()
    bruegger = AugmentationConfig.bruegger2019()
    assert bruegger.rotation_degrees == 20 and bruegger.scale_range == (1 / 1.1, 1.1)
    assert (bruegger.elastic_points, bruegger.elastic_sigma, bruegger.intensity_shift) == (3, 10, 0.1)
    assert AugmentationConfig.pendse2020().intensity_scale == 0.1
    assert AugmentationConfig.invres2020().flip_probability == 0.5
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        AugmentationConfig.preset("bogus")
    with pytest.raises(ValueError, match="scale_range"):
        AugmentationConfig(scale_range=(1.2, 1.1))
    with pytest.raises(ValueError, match="flip_axes"):
        AugmentationConfig(flip_axes=(3,))
    assert Augmentation(AugmentationConfig.none()).context_margin((8, 8, 8)) == (0, 0, 0)
    margin = Augmentation(bruegger).context_margin((64, 64, 64))
    assert margin[2] == 0 and margin[0] > 30  # rotated corners plus 3 sigma of elastic reach


def test_label_values_are_kept_exactly():
    image, label = coordinate_case((32, 32, 14))
    image_t, label_t = torch.from_numpy(image), torch.from_numpy(label.astype(np.int64))
    mild = Augmentation(
        AugmentationConfig(rotation_degrees=20, scale_range=(0.9, 1.1), elastic_sigma=2, flip_probability=0.5)
    )
    strong = Augmentation(AugmentationConfig.bruegger2019())
    for seed in range(6):
        _, out = mild(image_t, label_t, seed)
        assert out.dtype == torch.int64 and set(out.unique().tolist()) == {0, 2, 4}
        _, out = strong(image_t, label_t, seed)
        assert set(out.unique().tolist()) <= {0, 2, 4}
    uint8 = strong(image_t, torch.from_numpy(label), 0)[1]
    assert uint8.dtype == torch.uint8


def test_flips_flip_image_and_label_together():
    image, label = blob_case()
    image_t, label_t = torch.from_numpy(image), torch.from_numpy(label)
    every_axis = Augmentation(AugmentationConfig(flip_probability=1.0))
    out_image, out_label = every_axis(image_t, label_t, 0)
    np.testing.assert_array_equal(out_image.numpy(), np.flip(image, axis=(1, 2, 3)))
    np.testing.assert_array_equal(out_label.numpy(), np.flip(label, axis=(0, 1, 2)))
    only_y = Augmentation(AugmentationConfig(flip_probability=1.0, flip_axes=(1,)))
    np.testing.assert_array_equal(only_y(image_t, label_t, 0)[1].numpy(), np.flip(label, axis=1))
    # Random flips at p 0.5 over many seeds: each axis is flipped sometimes, and never apart.
    random_flips = Augmentation(AugmentationConfig(flip_probability=0.5))
    seen = set()
    for seed in range(16):
        out_image, out_label = random_flips(image_t, label_t, seed)
        flipped = tuple(
            not np.array_equal(
                out_label.numpy().sum(axis=tuple(a for a in range(3) if a != axis)),
                label.sum(axis=tuple(a for a in range(3) if a != axis)),
            )
            for axis in range(3)
        )
        seen.add(flipped)
        np.testing.assert_array_equal(out_image[0].numpy() == 2.0, out_label.numpy() == 1)
    assert len(seen) >= 6


def test_full_augmentation_keeps_image_and_label_aligned():
    image, label = blob_case()
    augment = Augmentation(AugmentationConfig.bruegger2019())
    for seed in range(8):
        out_image, out_label = augment(torch.from_numpy(image), torch.from_numpy(label), seed)
        bright = out_image[0] > 0.5  # halfway between the blob (2) and the brain (-1)
        marked = out_label == 1
        dice = 2 * (bright & marked).sum() / (bright.sum() + marked.sum())
        assert dice > 0.85, f"seed {seed}: image and label drifted apart (Dice {dice:.2f})"


def test_in_plane_warps_never_mix_axial_slices():
    shape = (26, 30, 12)
    image = np.zeros((4, *shape), dtype=np.float32)
    for k in range(shape[2]):
        image[:, 5:21, 6:24, k] = k + 1
    label = np.zeros(shape, dtype=np.int64)
    label[8:18, 9:20, :] = 2
    for config in (
        AugmentationConfig(rotation_degrees=20),
        AugmentationConfig(
            rotation_degrees=20, scale_range=(1 / 1.1, 1.1), elastic_sigma=3, flip_probability=0.5, flip_axes=(0, 1)
        ),
    ):
        augment = Augmentation(config)
        changed = []
        for seed in range(4):
            out_image, out_label = augment(torch.from_numpy(image), torch.from_numpy(label), seed)
            out_image = out_image.numpy()
            pattern = out_image[0, :, :, 0]  # slice 0 holds 1s: the in-plane footprint
            assert pattern.max() == pytest.approx(1.0)
            for k in range(shape[2]):
                # Same parameters for every slice, and nothing from neighbouring slices.
                np.testing.assert_allclose(
                    out_image[:, :, :, k], np.broadcast_to((k + 1) * pattern, (4, *shape[:2])), rtol=1e-6, atol=1e-6
                )
                assert np.array_equal(out_label[..., k], out_label[..., 0])
            changed.append(not np.array_equal(out_label.numpy()[..., 0], label[..., 0]))
        assert any(changed), "the warp did nothing"


def test_warp_grid_identity_and_rotation():
    grid = in_plane_grid((5, 7))
    volume = torch.arange(5 * 7 * 2, dtype=torch.float32).reshape(1, 5, 7, 2)
    torch.testing.assert_close(warp_slices(volume, grid, nearest=False), volume)
    # 90 degrees on a square slice is an exact rotation of the array.
    square = torch.arange(25, dtype=torch.float32).reshape(1, 5, 5, 1)
    rotated = warp_slices(square, in_plane_grid((5, 5), degrees=90), nearest=True)
    assert any(torch.equal(rotated[0, :, :, 0], torch.rot90(square[0, :, :, 0], k)) for k in (1, 3))


def test_intensity_changes_spare_the_background_and_leave_global_rng_alone():
    image, label = blob_case()
    state = torch.get_rng_state()
    shifted, _ = Augmentation(AugmentationConfig(intensity_shift=0.1))(torch.from_numpy(image), None, 3)
    assert torch.equal(torch.get_rng_state(), state)
    shifted = shifted.numpy()
    background = image == 0
    assert np.all(shifted[background] == 0)
    shifts = [np.unique(np.round(shifted[c][~background[c]] - image[c][~background[c]], 5)) for c in range(4)]
    assert all(len(s) == 1 and abs(s[0]) <= 0.1 for s in shifts)
    assert len({float(s[0]) for s in shifts}) == 4  # one draw per channel
    scaled, _ = Augmentation(AugmentationConfig(intensity_scale=0.1, intensity_foreground_only=False))(
        torch.from_numpy(image), None, 3
    )
    ratios = scaled.numpy()[:, label == 1] / image[:, label == 1]
    assert np.all((ratios >= 0.9) & (ratios <= 1.1)) and np.allclose(ratios, ratios[:, :1])


def test_margin_computes_only_the_centre_of_the_same_warp():
    image, label = blob_case((30, 32, 6))
    image_t, label_t = torch.from_numpy(image), torch.from_numpy(label)
    rotate = Augmentation(AugmentationConfig(rotation_degrees=20, scale_range=(0.9, 1.1)))
    whole, whole_label = rotate(image_t, label_t, 11)
    centre, centre_label = rotate(image_t, label_t, 11, margin=(5, 4, 0))
    assert centre.shape == (4, 20, 24, 6) and centre_label.shape == (20, 24, 6)
    torch.testing.assert_close(centre, whole[:, 5:-5, 4:-4], rtol=1e-5, atol=1e-5)
    assert torch.equal(centre_label, whole_label[5:-5, 4:-4])
    # Without a warp the context is simply cut off.
    flips = Augmentation(AugmentationConfig(flip_probability=1.0))
    cut, _ = flips(image_t, label_t, 0, margin=(5, 4, 0))
    assert torch.equal(cut, torch.flip(image_t[:, 5:-5, 4:-4], dims=(1, 2, 3)))
    with pytest.raises(ValueError, match="never needs context along z"):
        rotate(image_t, label_t, 0, margin=(1, 1, 1))

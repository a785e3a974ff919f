"""Prediction with a trained model, and writing it as label files that sit beside the references.

Steps for one case: the preprocessed image is run through the model, either whole (padded
to the model's ``size_multiple``) or as overlapping windows blended by torchio's grid
sampler and aggregator; optional test-time flips average the probabilities; probabilities
become canonical labels (BraTS: sigmoid > 0.5 per region, then the overwrite order WT→2,
TC→1, ET→4; iSeg: argmax); :func:`revunet.data.preprocess.paste_back` returns them to the
original image grid, :func:`revunet.data.labels.canonical_to_disk` to the dataset's own
label values; the result is written as a uint8 NIfTI with the original affine.

Choices, and why:

- Windows are blended with a Hann weight (torchio's ``overlap_mode="hann"``): voxels near
  a window's border saw little context and zero padding, so they count less than the same
  voxels seen from the middle of a neighbouring window. Where only one window covers a
  voxel the weight cancels and its prediction is kept as it is.
- A window larger than the volume along an axis is shrunk to the volume along that axis;
  a window (or whole volume) that the model cannot take is zero-padded at its far end up to
  the model's ``size_multiple`` (:mod:`revunet.models.sizing`) and the padding is cropped
  from the output. Zero is the background value of the z-scored images, so padding looks
  like more background.
- Test-time flips use all 8 combinations of the three spatial axes (identity included),
  matching training augmentation that flips each axis independently; they are applied to
  each window. Probabilities, not labels, are averaged.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import itertools
import os
import time
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torchio as tio
from torch import nn

from revunet.atomic import open_atomic, write_text_atomic
from revunet.catalog import OUTPUTS
from revunet.data.case_table import read_case_table
from revunet.data.labels import canonical_to_disk
from revunet.data.preprocess import PreprocessedCase, load_preprocessed, meta_path, npz_path, paste_back
from revunet.data.splits import read_split
from revunet.devices import DeviceError, resolve_device
from revunet.experiments.recipe import FROM_EXPERIMENT, Experiment
from revunet.models.compiled import compile_blocks
from revunet.models.sizing import head_outputs, pad_to_multiple, size_multiple
from revunet.models.vae import SegmentationWithVAE
from revunet.tasks import get_task
from revunet.training.state import model_from_checkpoint

OVERLAP_MODE = "hann"
# Every subset of the spatial axes of a (N, C, X, Y, Z) batch: the 8 flips of test-time augmentation.
FLIP_AXES: tuple[tuple[int, ...], ...] = tuple(
    axes for count in range(4) for axes in itertools.combinations((2, 3, 4), count)
)
PREDICTIONS_COLUMNS = ("case_id", "prediction", "seconds")
PREDICTIONS_FILE = "predictions.csv"


# --------------------------------------------------------------------------- probabilities


def _probabilities(model: nn.Module, batch: torch.Tensor, output: str) -> torch.Tensor:
    """Model probabilities for a batch of any spatial size (padded to the model's multiple, cropped back)."""
    size = batch.shape[2:]
    batch = pad_to_multiple(batch, size_multiple(model))
    logits = model(batch)
    if isinstance(logits, SegmentationWithVAE):
        logits = logits.logits
    logits = logits[(..., *(slice(0, s) for s in size))].float()
    return torch.sigmoid(logits) if output == "sigmoid" else torch.softmax(logits, dim=1)


def _flip_averaged(model: nn.Module, batch: torch.Tensor, output: str, flips: bool) -> torch.Tensor:
    """Probabilities, averaged over the 8 axis flips when ``flips`` (each flipped back first)."""
    if not flips:
        return _probabilities(model, batch, output)
    total = None
    for axes in FLIP_AXES:
        flipped = batch.flip(axes) if axes else batch
        probs = _probabilities(model, flipped, output)
        probs = probs.flip(axes) if axes else probs
        total = probs if total is None else total.add_(probs)
    assert total is not None
    return total.div_(len(FLIP_AXES))


def _check_window(window: Sequence[int], overlap: int) -> tuple[int, int, int]:
    window = tuple(int(w) for w in window)
    if len(window) != 3 or any(w < 1 for w in window):
        raise ValueError(f"the sliding window must be three positive sizes, got {window}")
    if overlap < 0 or overlap % 2:
        raise ValueError(f"the window overlap must be an even number of voxels >= 0 (torchio's grid), got {overlap}")
    if overlap >= min(window):
        raise ValueError(f"the window overlap {overlap} must be smaller than every window size {window}")
    return window  # type: ignore[return-value]


def _sliding(
    model: nn.Module,
    image: torch.Tensor,
    output: str,
    window: tuple[int, int, int],
    overlap: int,
    flips: bool,
    device: torch.device,
) -> torch.Tensor:
    """Windows from torchio's GridSampler, blended by its GridAggregator; (K, X, Y, Z) on the CPU."""
    shape = image.shape[1:]
    patch = tuple(min(w, s) for w, s in zip(window, shape))
    # Along an axis the window spans entirely there is one window and nothing to overlap.
    overlaps = tuple(overlap if p < s else 0 for p, s in zip(patch, shape))
    subject = tio.Subject(image=tio.ScalarImage(tensor=image.detach().cpu().float()))
    sampler = tio.GridSampler(subject, patch_size=patch, patch_overlap=overlaps)
    aggregator = tio.GridAggregator(sampler, overlap_mode=OVERLAP_MODE)
    for index in range(len(sampler)):
        piece = sampler[index]
        batch = piece["image"].data[None].to(device)
        probs = _flip_averaged(model, batch, output, flips)
        aggregator.add_batch(probs.cpu(), piece[tio.LOCATION][None])
    return aggregator.get_output_tensor().float()


def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    output: str,
    window: Sequence[int] | None = None,
    overlap: int = 0,
    flips: bool = False,
    device: str | torch.device | None = None,
    fallback_window: Sequence[int] | None = None,
) -> torch.Tensor:
    """Probabilities ``(K, X, Y, Z)`` float32 (on the CPU) for one image ``(C, X, Y, Z)``.

    ``output`` is ``"sigmoid"`` (independent regions) or ``"softmax"`` (exclusive classes).
    ``window`` None, or a window at least as large as the image, predicts the whole volume at
    once; otherwise overlapping windows (``overlap`` voxels, even) are blended (see the module
    docstring). ``flips`` averages over the 8 axis flips. ``device`` defaults to the model's.
    ``fallback_window``: when the whole volume raises ``torch.OutOfMemoryError`` (CUDA out of
    memory), predict with these windows instead of failing. Models returning
    :class:`SegmentationWithVAE` are read through ``.logits``. The model runs in eval mode and is
    left in the mode it was in.
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if image.dim() != 4:
        raise ValueError(f"expected an image of shape (channels, x, y, z), got {tuple(image.shape)}")
    if window is not None:
        window = _check_window(window, overlap)
    if device is None:
        parameter = next(model.parameters(), None)
        device = parameter.device if parameter is not None else torch.device("cpu")
    device = torch.device(device)
    shape = tuple(image.shape[1:])
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            if window is None or all(w >= s for w, s in zip(window, shape)):
                try:
                    return _flip_averaged(model, image[None].to(device), output, flips)[0].cpu()
                except torch.OutOfMemoryError:
                    if fallback_window is None:
                        raise
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    warnings.warn(
                        f"the whole {'x'.join(map(str, shape))} volume does not fit in {device.type} memory; "
                        f"predicting with {'x'.join(map(str, fallback_window))} windows instead",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    window = _check_window(fallback_window, overlap)
            return _sliding(model, image, output, window, overlap, flips, device)
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------- labels and files


def write_label_nifti(path: str | os.PathLike[str], label: np.ndarray, affine: np.ndarray | Sequence) -> Path:
    """Write a uint8 label map as a gzipped NIfTI-1 file with ``affine``, atomically.

    The image is serialised in memory and gzipped into :func:`revunet.atomic.open_atomic`'s
    temporary file, so the temporary name needs no ``.nii.gz`` suffix for nibabel.
    """
    path = Path(path)
    if not path.name.endswith(".nii.gz"):
        raise ValueError(f"{path}: label files are written as .nii.gz")
    affine = np.asarray(affine, dtype=np.float64)
    image = nib.Nifti1Image(np.asarray(label, dtype=np.uint8), affine)
    image.set_data_dtype(np.uint8)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    with open_atomic(path, "wb") as stream, gzip.GzipFile(filename="", mode="wb", fileobj=stream, mtime=0) as packed:
        packed.write(image.to_bytes())
    return path


@dataclass(frozen=True)
class InferenceSettings:
    """How a case is predicted: output activation, window (None: whole volume), overlap, flips, device."""

    output: str
    window: tuple[int, int, int] | None = None
    overlap: int = 0
    flips: bool = False
    device: str | torch.device = "cpu"
    fallback_window: tuple[int, int, int] | None = None


def predict_with(model: nn.Module, image: torch.Tensor, settings: InferenceSettings) -> torch.Tensor:
    """:func:`predict_volume` as ``settings`` say: the one way inference and validation predict."""
    return predict_volume(
        model,
        image,
        settings.output,
        window=settings.window,
        overlap=settings.overlap,
        flips=settings.flips,
        device=settings.device,
        fallback_window=settings.fallback_window,
    )


def predict_case(model: nn.Module, case: PreprocessedCase, layout: str, settings: InferenceSettings) -> np.ndarray:
    """The on-disk label map (uint8, original image grid) that ``model`` predicts for a preprocessed case."""
    probs = predict_with(model, torch.from_numpy(np.ascontiguousarray(case.image, dtype=np.float32)), settings)
    label = get_task(case.meta.task).labels_from_probabilities(probs)
    return canonical_to_disk(paste_back(label, case.meta), layout)


# --------------------------------------------------------------------------- a whole split


class InferenceError(ValueError):
    """Inputs that do not fit together (missing cases, a checkpoint of another task...)."""


def model_output(model: nn.Module, task: str) -> str:
    """The task's activation, checked against what the model's heads declare (:func:`revunet.models.sizing.head_outputs`)."""
    declared = head_outputs(model)
    expected = get_task(task).output
    if declared and declared != {expected}:
        raise InferenceError(f"the model's head uses {sorted(declared)} but task {task!r} needs {expected!r}")
    return expected


def _case_rows(
    cases: str | os.PathLike[str],
    preprocessed: str | os.PathLike[str],
    split: str | os.PathLike[str] | None,
    part: str,
) -> list[tuple[str, dict[str, Any]]]:
    """(case id, case-table row) of every case of the split's ``part`` in its order, or of the whole
    case table without a split (an unlabelled challenge folder); each has preprocessed files."""
    table = read_case_table(cases)
    if split is None:
        case_ids = [str(case_id) for case_id in table["case_id"]]
        if not case_ids:
            raise InferenceError(f"{cases}: the case table lists no cases")
    else:
        try:
            case_ids = read_split(split).part(part)
        except ValueError as error:
            raise InferenceError(str(error)) from None
        if not case_ids:
            raise InferenceError(f"{split}: the {part} part lists no cases")
    rows = {str(row["case_id"]): row for row in table.to_dict(orient="records")}
    absent = [case_id for case_id in case_ids if case_id not in rows]
    if absent:
        raise InferenceError(f"case(s) {absent[:10]} of {split} ({part}) are not in the case table {cases}")
    for case_id in case_ids:
        for path in (npz_path(preprocessed, case_id), meta_path(preprocessed, case_id)):
            if not path.is_file():
                raise InferenceError(
                    f"case {case_id}: no preprocessed file {path} (run `revunet preprocess` for this case)"
                )
    return [(case_id, rows[case_id]) for case_id in case_ids]


def experiment_settings(experiment: Experiment, output: str, target: torch.device) -> InferenceSettings:
    """How the experiment's cases are predicted (window, overlap, flips): `revunet infer`'s defaults,
    and what validation always uses, so best.pt is chosen on what inference will produce."""
    return InferenceSettings(
        output=output,
        window=experiment.sliding_window,
        overlap=experiment.window_overlap,
        flips=experiment.test_time_flips,
        device=target,
        fallback_window=experiment.patch_size,
    )


def _settings(
    model: nn.Module,
    experiment: Experiment,
    target: torch.device,
    flips: bool | None,
    window: Sequence[int] | str | None,
    overlap: int | None,
) -> InferenceSettings:
    """The experiment's inference settings, with the options that are given overriding them."""
    settings = dataclasses.replace(
        experiment_settings(experiment, model_output(model, experiment.task), target),
        window=experiment.sliding_window if window == FROM_EXPERIMENT else (tuple(window) if window else None),
        overlap=experiment.window_overlap if overlap is None else int(overlap),
        flips=experiment.test_time_flips if flips is None else bool(flips),
    )
    if settings.window is not None:
        _check_window(settings.window, settings.overlap)
    return settings


def _describe(settings: InferenceSettings) -> str:
    """How the cases are predicted, for the log: whole volumes or windows, and flips."""
    if settings.window is None:
        how = "whole volumes"
    else:
        how = f"{'x'.join(map(str, settings.window))} windows, overlap {settings.overlap}"
    return f"{how}, flips {'on' if settings.flips else 'off'}"


def _predict_and_write(
    model: nn.Module,
    task: str,
    case_id: str,
    layout: str,
    preprocessed: str | os.PathLike[str],
    path: Path,
    settings: InferenceSettings,
) -> tuple[int, ...]:
    """Predict one case and write its label file; returns the label map's shape."""
    try:
        case = load_preprocessed(preprocessed, case_id)
        if case.meta.task != task:
            raise InferenceError(f"preprocessed for task {case.meta.task!r}, not {task!r}")
        label = predict_case(model, case, layout, settings)
        write_label_nifti(path, label, case.meta.affine)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # a damaged or odd case
        raise InferenceError(f"case {case_id} ({preprocessed}): {error}") from error
    return label.shape


def _write_listing(out: Path, records: Sequence[tuple[str, str, float]]) -> Path:
    """``predictions.csv``: case id, file name inside ``out`` and seconds (3 decimals) of every case."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PREDICTIONS_COLUMNS)
    writer.writerows((case_id, name, f"{seconds:.3f}") for case_id, name, seconds in records)
    return write_text_atomic(out / PREDICTIONS_FILE, text.getvalue())


def infer_cases(
    checkpoint: str | os.PathLike[str],
    cases: str | os.PathLike[str],
    preprocessed: str | os.PathLike[str],
    split: str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    part: str = "test",
    device: str = "auto",
    flips: bool | None = None,
    window: Sequence[int] | str | None = FROM_EXPERIMENT,
    overlap: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Predict every case of a split's ``part`` (``split`` None: every case of the case table, as for a
    challenge's unlabelled validation folder); writes ``<out>/<case_id>.nii.gz`` then ``predictions.csv``.

    ``flips``/``window``/``overlap`` default to the checkpoint's experiment (``test_time_flips``,
    ``sliding_window``, ``window_overlap``); ``window=None`` forces whole volumes. Every input is
    checked before the first prediction; problems raise :class:`InferenceError`,
    FileNotFoundError or ValueError naming the file or case. ``predictions.csv`` (columns
    case_id, prediction = the file name inside ``out``, seconds = wall time of the case) is
    written last, and an older one is removed first, so it exists only after a complete run.
    Returns its path.
    """
    out = Path(out)
    try:
        target = resolve_device(device)
    except DeviceError as error:
        raise InferenceError(str(error)) from None
    rows = _case_rows(cases, preprocessed, split, part)
    model, experiment, _ = model_from_checkpoint(checkpoint, map_location=target)
    compiled = compile_blocks(model) if experiment.compile else []
    tasks = {row["task"] for _, row in rows}
    if tasks != {experiment.task}:
        raise InferenceError(
            f"{checkpoint} was trained for task {experiment.task!r} but the cases are {sorted(tasks)} ({cases})"
        )
    settings = _settings(model, experiment, target, flips, window, overlap)
    blocks = f", {len(compiled)} compiled block(s)" if compiled else ""
    which = part if split is not None else "listed"
    log(f"{experiment.name}: {len(rows)} {which} case(s) on {target}, {_describe(settings)}{blocks}")

    # The list marks a finished run: drop an old one before the first file is replaced.
    (out / PREDICTIONS_FILE).unlink(missing_ok=True)
    records = []
    for case_id, row in rows:
        start = time.perf_counter()
        name = f"{case_id}.nii.gz"
        shape = _predict_and_write(model, experiment.task, case_id, row["layout"], preprocessed, out / name, settings)
        seconds = time.perf_counter() - start
        records.append((case_id, name, seconds))
        log(f"{case_id}: {'x'.join(map(str, shape))} -> {out / name} ({seconds:.2f} s)")
    return _write_listing(out, records)

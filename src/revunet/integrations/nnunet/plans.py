"""nnU-Net plans whose networks are reversible, with patch and batch sized by exact memory.

nnU-Net's planner sizes a configuration's patch by a heuristic (``compute_conv_feature_map_size``
against a reference value per GPU budget). Here each configuration's training step is measured
instead: the network nnU-Net would build (through nnU-Net's own ``get_network_from_plans``),
nnU-Net's loss with deep supervision, its SGD with Nesterov momentum and half-precision
autocast with CUDA's dtype choices (:mod:`revunet.memory.autocast_policy`), on fake tensors (:func:`revunet.memory.accounting.measure_training_step`: exact
tensor bytes, no memory used, seconds per measurement). The architecture keeps the plans'
topology; only the patch grows (by each axis' stride product, nnU-Net's divisibility rule, up
to the median image size) and then the batch, while the step fits the budget.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss, DC_and_CE_loss
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from revunet.memory.accounting import measure_training_step

NETWORKS = {
    "resenc": "revunet.integrations.nnunet.ReversibleResEncUNet",
    "partially-reversible": "revunet.integrations.nnunet.PartiallyReversibleNNUNet",
}
RESENC = "ResidualEncoderUNet"
MIB = 2**20
MIN_BATCH = 2  # nnU-Net's planners' UNet_min_batch_size


class PlansError(ValueError):
    """A plans or dataset file this command cannot use (the message names the file and the key)."""


@dataclass(frozen=True)
class Labels:
    """What nnU-Net's label manager says about a dataset: input channels, output maps, regions or classes."""

    input_channels: int
    output_channels: int
    regions: bool


@dataclass(frozen=True)
class Step:
    """One training step's shape: a configuration's architecture, patch and batch."""

    architecture: dict[str, Any]
    patch: tuple[int, ...]
    batch: int


def read_json(path: str | Path, what: str) -> dict[str, Any]:
    """A JSON object from ``path``, or a :class:`PlansError` naming the file and what was wrong."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlansError(f"{path}: no such {what} file") from None
    except json.JSONDecodeError as error:
        raise PlansError(f"{path}: not valid JSON ({error}); expected nnU-Net's {what}") from None
    if not isinstance(value, dict):
        raise PlansError(f"{path}: expected a JSON object ({what}), got {type(value).__name__}")
    return value


def dataset_labels(plans: dict[str, Any], dataset_json: dict[str, Any]) -> Labels:
    """Input channels and output maps as nnU-Net's trainer derives them from ``dataset.json``."""
    channels = dataset_json.get("channel_names", dataset_json.get("modality"))
    if not isinstance(channels, dict) or not channels:
        raise PlansError("dataset.json: expected 'channel_names', a mapping of channel index to name")
    manager = PlansManager(plans).get_label_manager(dataset_json)
    return Labels(len(channels), manager.num_segmentation_heads, manager.has_regions)


def architecture(configuration: ConfigurationManager) -> dict[str, Any]:
    """A configuration's ``architecture`` entry, as a plans file holds it."""
    return {
        "network_class_name": configuration.network_arch_class_name,
        "arch_kwargs": dict(configuration.network_arch_init_kwargs),
        "_kw_requires_import": list(configuration.network_arch_init_kwargs_req_import),
    }


def reversible_architecture(original: dict[str, Any], network: str, where: str) -> dict[str, Any]:
    """The reversible counterpart of a residual-encoder U-Net's ``architecture`` entry."""
    if not original["network_class_name"].endswith(RESENC):
        raise PlansError(
            f"{where}.architecture.network_class_name: expected nnU-Net's {RESENC} (a ResEnc plans file, "
            f"e.g. nnUNetResEncUNetLPlans.json), got {original['network_class_name']!r}"
        )
    if network == "resenc":
        return {**copy.deepcopy(original), "network_class_name": NETWORKS[network]}
    kwargs = original["arch_kwargs"]
    if "3d" not in str(kwargs.get("conv_op", "")).lower():
        raise PlansError(f"{where}: the partially reversible U-Net is 3-D; this configuration is not")
    ours = {key: kwargs[key] for key in ("n_stages", "features_per_stage", "strides")}
    return {"network_class_name": NETWORKS[network], "arch_kwargs": ours, "_kw_requires_import": []}


def build_network(arch: dict[str, Any], labels: Labels, deep_supervision: bool = True) -> nn.Module:
    """The network nnU-Net builds from ``arch``, on the meta device (no memory: it is only measured)."""
    with torch.device("meta"):
        return get_network_from_plans(
            arch["network_class_name"],
            arch["arch_kwargs"],
            arch["_kw_requires_import"],
            labels.input_channels,
            labels.output_channels,
            allow_init=False,
            deep_supervision=deep_supervision,
        )


def nnunet_loss(labels: Labels, outputs: int, batch_dice: bool) -> nn.Module:
    """nnU-Net's default trainer loss (``_build_loss``): dice + CE or BCE, deep supervision weights."""
    if labels.regions:
        dice = {"batch_dice": batch_dice, "do_bg": True, "smooth": 1e-5, "ddp": False}
        loss: nn.Module = DC_and_BCE_loss({}, dice, dice_class=MemoryEfficientSoftDiceLoss)
    else:
        dice = {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}
        loss = DC_and_CE_loss(dice, {}, weight_ce=1, weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    weights = np.array([1 / 2**i for i in range(outputs)])
    weights[-1] = 0
    return DeepSupervisionWrapper(loss, weights / weights.sum())


def _cumulative_strides(arch: dict[str, Any]) -> np.ndarray:
    """Each stage's downsampling per axis from the input: the products of the strides up to it."""
    return np.cumprod(np.array(arch["arch_kwargs"]["strides"], dtype=np.int64), axis=0)


def _scales(arch: dict[str, Any]) -> list[tuple[int, ...]]:
    """Each deep-supervision output's downsampling per axis, full resolution first (as nnU-Net's)."""
    return [tuple(int(v) for v in s) for s in _cumulative_strides(arch)[:-1]]


def _training_loss(labels: Labels, arch: dict[str, Any], batch_dice: bool) -> Callable[..., torch.Tensor]:
    scales = _scales(arch)
    loss = nnunet_loss(labels, len(scales), batch_dice)

    def step_loss(outputs: list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        targets = [target[(..., *(slice(None, None, s) for s in scale))] for scale in scales]
        return loss(outputs, targets)

    return step_loss


def step_peak(step: Step, labels: Labels, batch_dice: bool = False) -> int:
    """Bytes of live tensors at the peak of one nnU-Net training step (fake tensors, exact).

    Remembered per step: a search revisits steps (a patch that did not fit is tried again after
    another axis grew; the plans' own step starts both the search and the report).
    """
    return _measured_peak(json.dumps(step.architecture, sort_keys=True), step.patch, step.batch, labels, batch_dice)


@functools.cache
def _measured_peak(architecture_json: str, patch: tuple[int, ...], batch: int, labels: Labels, batch_dice: bool) -> int:
    arch = json.loads(architecture_json)
    net = build_network(arch, labels)
    target_channels = labels.output_channels if labels.regions else 1
    report = measure_training_step(
        net,
        (batch, labels.input_channels, *patch),
        optimizer=lambda params: torch.optim.SGD(params, 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5),
        loss_fn=_training_loss(labels, arch, batch_dice),
        target_shape=(batch, target_channels, *patch),
        target_dtype=torch.float32 if labels.regions else torch.int16,
        autocast_dtype=torch.float16,
        autocast_policy="cuda",  # nnU-Net trains under CUDA autocast
    )
    return int(report.peak_bytes)


@dataclass(frozen=True)
class Sized:
    """One configuration: peaks in bytes at the plans' step, and the largest steps each network fits in the budget.

    ``original_sized`` is None where no patch of the original network fits the budget.
    """

    configuration: str
    original: Step
    original_peak: int
    reversible_peak_same_patch: int
    sized: Step
    sized_peak: int
    original_sized: Step | None

    @property
    def patch_gained(self) -> float | None:
        """Voxels per patch within the budget: the reversible network's over the original network's."""
        if self.original_sized is None:
            return None
        return float(np.prod(self.sized.patch) / np.prod(self.original_sized.patch))

    def row(self) -> dict[str, Any]:
        """The row ``revunet nnunet-plans`` prints (MiB, patches as AxBxC)."""
        gained = self.patch_gained
        return {
            "configuration": self.configuration,
            "patch": _patch(self.original),
            "original_mib": round(self.original_peak / MIB),
            "reversible_mib": round(self.reversible_peak_same_patch / MIB),
            "original_in_budget": "none fits" if self.original_sized is None else _patch(self.original_sized),
            "reversible_in_budget": _patch(self.sized),
            "reversible_in_budget_mib": round(self.sized_peak / MIB),
            "patch_gained": None if gained is None else round(gained, 2),
        }


def _patch(step: Step) -> str:
    """``AxBxC, batch N``: a step's patch and batch as a table cell."""
    return f"{'x'.join(map(str, step.patch))}, batch {step.batch}"


def _divisors(arch: dict[str, Any]) -> tuple[int, ...]:
    """Each axis' product of strides: nnU-Net's patch sizes are multiples of it."""
    return tuple(int(v) for v in _cumulative_strides(arch)[-1])


def _caps(median: list[float], divisors: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """The largest patch worth training on: the median image rounded up to the divisors (or the plans' patch)."""
    return tuple(max(p, int(np.ceil(m / d)) * d) for m, d, p in zip(median, divisors, patch))


def _grow(patch: tuple[int, ...], divisors: tuple[int, ...], caps: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Patches one step larger, the axis with the least of its cap first (nnU-Net's shrinking, reversed)."""
    order = sorted(range(len(patch)), key=lambda a: patch[a] / caps[a])
    grown = []
    for axis in order:
        if patch[axis] + divisors[axis] <= caps[axis]:
            grown.append(tuple(p + divisors[axis] if a == axis else p for a, p in enumerate(patch)))
    return grown


def _shrink(patch: tuple[int, ...], divisors: tuple[int, ...], caps: tuple[int, ...]) -> tuple[int, ...] | None:
    """The patch one step smaller along the axis with the most of its cap, or None at the smallest."""
    axes = [a for a in range(len(patch)) if patch[a] > divisors[a]]
    if not axes:
        return None
    axis = max(axes, key=lambda a: patch[a] / caps[a])
    return tuple(p - divisors[axis] if a == axis else p for a, p in enumerate(patch))


def size_step(
    start: Step, median: list[float], cases: int, labels: Labels, budget: int, batch_dice: bool
) -> tuple[Step, int]:
    """The largest patch, then batch, from ``start`` whose step fits ``budget`` bytes, and its peak.

    As nnU-Net's planner: the patch first, at nnU-Net's smallest batch (2), shrunk if it does
    not fit (down to one stride product per axis) or grown while it fits; then the batch. The batch
    grows at most to the dataset's voxels per patch (``cases`` median images), the cap of
    nnU-Net's residual-encoder planners (``max_dataset_covered = 1``). Each candidate is one
    measurement: about a second to a minute on a CPU.
    """
    divisors = _divisors(start.architecture)
    caps = _caps(median, divisors, start.patch)
    step = Step(start.architecture, start.patch, min(start.batch, MIN_BATCH))
    peak = step_peak(step, labels, batch_dice)
    while peak > budget:
        smaller = _shrink(step.patch, divisors, caps)
        if smaller is None:
            raise PlansError(f"no patch fits {budget / MIB:.0f} MiB: the smallest takes {peak / MIB:.0f} MiB")
        step = Step(step.architecture, smaller, step.batch)
        peak = step_peak(step, labels, batch_dice)
    grew = True
    while grew:
        grew = False
        for patch in _grow(step.patch, divisors, caps):
            candidate = Step(step.architecture, patch, step.batch)
            candidate_peak = step_peak(candidate, labels, batch_dice)
            if candidate_peak <= budget:
                step, peak, grew = candidate, candidate_peak, True
                break
    most = max(step.batch, int(cases * np.prod(median) // np.prod(step.patch)))
    return _more_batch(step, peak, most, labels, budget, batch_dice)


def _more_batch(step: Step, peak: int, most: int, labels: Labels, budget: int, batch_dice: bool) -> tuple[Step, int]:
    """The largest batch up to ``most`` that fits: predicted from two batch sizes (the peak is linear in it), checked."""
    if step.batch >= most:
        return step, peak
    bigger = Step(step.architecture, step.patch, step.batch + 1)
    bigger_peak = step_peak(bigger, labels, batch_dice)
    if bigger_peak > budget:
        return step, peak
    per_sample = max(bigger_peak - peak, 1)
    batch = min(most, bigger.batch + (budget - bigger_peak) // per_sample)
    while batch > bigger.batch:
        candidate = Step(step.architecture, step.patch, batch)
        candidate_peak = step_peak(candidate, labels, batch_dice)
        if candidate_peak <= budget:
            return candidate, candidate_peak
        batch -= 1
    return bigger, bigger_peak


def size_plans(
    plans: dict[str, Any],
    dataset_json: dict[str, Any],
    budget_bytes: int,
    network: str = "resenc",
    configurations: list[str] | None = None,
) -> tuple[dict[str, Any], list[Sized]]:
    """New plans (a new identifier) whose configurations train the reversible network, sized to the budget.

    Configurations whose network is not a residual-encoder U-Net, and 2-D ones for the
    partially reversible network, are refused by name when asked for, skipped otherwise.
    """
    manager = PlansManager(plans)
    labels = dataset_labels(plans, dataset_json)
    cases = int(dataset_json.get("numTraining", 1))
    new_plans = copy.deepcopy(plans)
    sized = []
    for name in configurations or manager.available_configurations:
        where = f"configurations.{name}"
        if name not in plans["configurations"]:
            raise PlansError(f"{where}: no such configuration (the plans have {sorted(plans['configurations'])})")
        configuration = manager.get_configuration(name)
        original = Step(architecture(configuration), tuple(configuration.patch_size), configuration.batch_size)
        try:
            ours = reversible_architecture(original.architecture, network, where)
        except PlansError:
            if configurations:
                raise
            continue
        one = _size_configuration(name, original, ours, configuration, cases, labels, budget_bytes)
        new_plans["configurations"][name].update(
            architecture=ours, patch_size=list(one.sized.patch), batch_size=one.sized.batch
        )
        sized.append(one)
    return new_plans, sized


def _size_configuration(
    name: str,
    original: Step,
    ours: dict[str, Any],
    configuration: ConfigurationManager,
    cases: int,
    labels: Labels,
    budget: int,
) -> Sized:
    """Both networks at the plans' step, and each sized to the budget by the same search."""
    same_patch = Step(ours, original.patch, original.batch)
    batch_dice = configuration.batch_dice
    median = configuration.median_image_size_in_voxels
    step, peak = size_step(same_patch, median, cases, labels, budget, batch_dice)
    try:
        original_sized: Step | None = size_step(original, median, cases, labels, budget, batch_dice)[0]
    except PlansError:
        original_sized = None
    original_peak = step_peak(original, labels, batch_dice)
    return Sized(name, original, original_peak, step_peak(same_patch, labels, batch_dice), step, peak, original_sized)

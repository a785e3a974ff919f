"""The example segmentation: an axial slice of each modality with reference and predicted contours."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from revunet.catalog import TASK_REGIONS
from revunet.experiments.recipe import Experiment
from revunet.report.figures.plots import new_figure, not_run
from revunet.report.inputs import Dataset, ReportContext, ReportInputError, dataset_of, read_predictions
from revunet.tasks import get_task

EXAMPLE_CAPTION = (
    "Example segmentation ({dataset}: {data}), experiment {experiment}, test case {case}: "
    "axial slice {slice} of each modality with the reference (solid) and predicted (dashed) contours of {regions}."
)
# Contour colours of the scored regions.
REGION_COLOURS = {
    "WT": "tab:green",
    "TC": "tab:orange",
    "ET": "tab:red",
    "CSF": "tab:cyan",
    "GM": "tab:orange",
    "WM": "tab:pink",
}


@dataclass(frozen=True)
class Example:
    """The case shown for one dataset: its images, reference and prediction in canonical labels."""

    dataset: Dataset
    experiment: str
    case_id: str
    images: dict[str, np.ndarray]
    reference: np.ndarray
    prediction: np.ndarray


def example_figure(
    dataset: Dataset,
    experiments: Sequence[Experiment],
    predictions: Path | None,
    chosen: str | None,
    context: ReportContext,
) -> tuple[Any, str]:
    """The example figure of ``dataset`` and its caption; a "not run" panel while it has no predictions."""
    found = choose_example(dataset, experiments, predictions, chosen, context)
    if found is None:
        figure, axes = new_figure(1, 1)
        not_run(axes[0], f"{dataset.name}: no predictions yet (not run)")
        return figure, f"Example segmentation ({dataset.name}): not run."
    experiment, case_id, prediction = found
    figure, z = example_segmentation(load_example(dataset, experiment, case_id, prediction))
    caption = EXAMPLE_CAPTION.format(
        dataset=dataset.name,
        data=dataset.description,
        experiment=experiment.name,
        case=case_id,
        slice=z,
        regions=", ".join(TASK_REGIONS[dataset.task]),
    )
    return figure, caption


def choose_example(
    dataset: Dataset,
    experiments: Sequence[Experiment],
    predictions: Path | None,
    chosen: str | None,
    context: ReportContext,
) -> tuple[Experiment, str, Path] | None:
    """(experiment, case id, prediction file) shown for ``dataset``.

    The chosen experiment, else the one with the best test mean Dice (a short demo run can
    collapse to an empty prediction, which would make a useless example), else the first in
    paper order with predictions.
    """
    candidates = [e for e in experiments if e.name == chosen] if chosen else list(experiments)
    if not chosen and context.inputs.evaluations is not None:

        def mean_dice(experiment: Experiment) -> float:
            metrics = context.metrics(experiment)
            return float(metrics["dice"].mean()) if metrics is not None and len(metrics) else -1.0

        candidates.sort(key=mean_dice, reverse=True)  # stable: ties keep paper order
    if chosen and not candidates:
        raise ReportInputError(
            f"--example {dataset.name}={chosen}: no experiment {chosen!r}; known: {[e.name for e in experiments]}"
        )
    for experiment in candidates:
        listed = read_predictions(predictions, experiment.name)
        if listed is None or listed.empty or dataset_of(experiment, listed["case_id"], [dataset]) is None:
            continue
        first = listed.iloc[0]
        path = Path(str(first["prediction"]))
        if not path.is_absolute():
            path = predictions / experiment.name / path
        return experiment, str(first["case_id"]), path
    return None


def load_example(dataset: Dataset, experiment: Experiment, case_id: str, prediction: Path) -> Example:
    """The case's images and reference (canonical) and the prediction mapped from the layout's disk values."""
    import nibabel as nib

    from revunet.data.io import CaseError, load_case
    from revunet.data.labels import disk_to_canonical

    row = dataset.cases[dataset.cases["case_id"].astype(str) == case_id].iloc[0]
    try:
        case = load_case(row)
    except CaseError as error:
        raise ReportInputError(f"dataset {dataset.name!r}: {error}") from None
    if case.label is None:
        raise ReportInputError(
            f"dataset {dataset.name!r}: case {case_id} has no reference label; expected a labelled case"
        )
    try:
        raw = np.asarray(nib.load(prediction).dataobj)
    except (OSError, ValueError) as error:
        raise ReportInputError(f"{prediction}: not a readable NIfTI prediction ({error})") from None
    raw = raw.reshape(raw.shape[:3]) if raw.ndim == 4 and raw.shape[3] == 1 else raw
    if raw.shape != case.label.shape:
        raise ReportInputError(f"{prediction}: shape {raw.shape}, expected the case's grid {case.label.shape}")
    try:
        prediction_label = disk_to_canonical(raw, str(row["layout"]))
    except ValueError as error:
        raise ReportInputError(f"{prediction}: {error}") from None
    return Example(dataset, experiment.name, case_id, case.images, case.label, prediction_label)


def centre_slice(reference: np.ndarray, image: np.ndarray) -> int:
    """Axial index through the centre of the labelled structure (tumour or brain), else of the head."""
    mask = reference != 0 if reference.any() else image != 0
    if not mask.any():
        return reference.shape[2] // 2
    weights = mask.sum(axis=(0, 1))
    return round(float(np.average(np.arange(mask.shape[2]), weights=weights)))


def example_segmentation(example: Example) -> tuple[Any, int]:
    """One panel per modality at the centre slice, reference contours solid, predicted dashed."""
    from matplotlib.lines import Line2D

    images = example.images
    z = centre_slice(example.reference, next(iter(images.values())))
    task = get_task(example.dataset.task)
    reference = task.region_masks(example.reference)
    predicted = task.region_masks(example.prediction)
    figure, axes = new_figure(len(images), len(images), (3.2, 3.4))
    for ax, (modality, image) in zip(axes, images.items(), strict=True):
        ax.imshow(image[:, :, z].T, cmap="gray", origin="lower", interpolation="nearest")
        for region, mask in reference.items():
            colour = REGION_COLOURS.get(region, "yellow")
            for masks, style in ((mask, "solid"), (predicted[region], "dashed")):
                plane = masks[:, :, z].T.astype(float)
                if plane.any() and not plane.all():
                    ax.contour(plane, levels=[0.5], colors=[colour], linestyles=style, linewidths=0.9)
        ax.set_title(modality, fontsize=9)
        ax.set_axis_off()
    handles = [Line2D([], [], color=REGION_COLOURS.get(r, "yellow"), label=r) for r in reference]
    handles += [
        Line2D([], [], color="black", linestyle="solid", label="reference"),
        Line2D([], [], color="black", linestyle="dashed", label="prediction"),
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False)
    figure.suptitle(f"{example.experiment}: {example.case_id}, axial slice {z}", fontsize=9)
    figure.tight_layout(rect=(0, 0.06, 1, 0.95))
    return figure, z

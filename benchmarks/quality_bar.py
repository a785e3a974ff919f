"""Does a demo-scale training run learn the synthetic BraTS task better than a voxel classifier?

The quality bar of the CPU demo: on the default synthetic BraTS data (`revunet synth --task
brats`, 20 subjects; `revunet preprocess --shape 48,64,48`; `revunet split --fraction 0.8`:
16 training, 4 held-out cases) train the partially reversible U-Net and its non-reversible
twin (``memory_saving`` False, same seed, same recipe) with `revunet train`'s code on one CPU
thread, then compute hard Dice per region (WT, TC, ET; sigmoid > 0.5; both empty = 1) of
``best.pt`` on the held-out volumes with numpy. The baseline is the per-voxel quadratic
discriminant of ``benchmarks/synthetic_separability.py`` (intensities only, no context),
fitted on the brain voxels of the same 16 training cases and tested on the same 4 cases.

The defaults are the demo recipe (docs/benchmarks/quality-bar.md; the workflow's demo
preset trains Brügger's rows with it): batches of two 32x48x32 crops, 45 epochs x 8 steps,
Adam lr 1e-3 x0.2 after epoch 35, validation on whole volumes every 5 epochs, about 130
CPU-s per model. Each run is scored twice: ``best.pt`` (picked on the held-out cases
themselves, so optimistic) and ``last.pt`` (the final weights, picked by nothing). Run from
the repository root (about 5 minutes on an idle core; wall time grows on a busy machine):

    .venv/bin/python benchmarks/quality_bar.py [--work DIR] [--channels 16,32,64,128] [--groups 8]
        [--norm group] [--head-norm] [--loss bruegger2019] [--smooth S] [--lr 0.001] [--milestones 35]
        [--gamma 0.2] [--batch 2] [--accumulation 1] [--weight-decay 0] [--grad-clip NORM] [--warmup 0]
        [--epochs 45] [--steps 8] [--validate-every 5] [--augmentation none] [--patch 32,48,32]
        [--ema-alpha 0] [--seed 0] [--threads 1] [--no-twin]
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from revunet.cli import main as revunet
from revunet.tasks import TASKS
from revunet.training.state import model_from_checkpoint
from synthetic_separability import GaussianClassifier, dice

BRATS_REGIONS = TASKS["brats"].regions
from revunet.data.preprocess import load_preprocessed  # noqa: E402
from revunet.data.splits import read_split  # noqa: E402
from revunet.evaluation.predict import predict_volume  # noqa: E402
from revunet.experiments.recipe import Experiment  # noqa: E402
from revunet.training.loop import train  # noqa: E402


def prepare(work: Path) -> tuple[Path, Path]:
    """The default synthetic BraTS data, preprocessed to 48x64x48 and split 80/20 (skipped if present)."""
    pre, split = work / "preprocessed", work / "split.json"
    if not split.is_file():
        revunet(["synth", "--task", "brats", "--out", str(work / "raw")])
        revunet(["cases", str(work / "raw"), "--out", str(work / "cases.csv")])
        revunet(["preprocess", "--cases", str(work / "cases.csv"), "--all", "--shape", "48,64,48", "--out", str(pre)])
        revunet(["split", "--cases", str(work / "cases.csv"), "--fraction", "0.8", "--out", str(split)])
    return pre, split


def brain_features(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(voxels, modalities) intensities of the brain (non-zero in any modality) and the brain mask."""
    brain = np.any(image != 0, axis=0)
    return image[:, brain].T.astype(np.float64), brain


def voxel_baseline(pre: Path, train_ids: list[str], test_ids: list[str]) -> dict[str, float]:
    """Mean Dice per region of the per-voxel Gaussian classifier on the held-out cases."""
    features, labels = [], []
    for case_id in train_ids:
        case = load_preprocessed(pre, case_id)
        x, brain = brain_features(case.image)
        features.append(x)
        labels.append(case.label[brain])
    classifier = GaussianClassifier().fit(np.concatenate(features), np.concatenate(labels))
    scores: dict[str, list[float]] = {region: [] for region in BRATS_REGIONS}
    for case_id in test_ids:
        case = load_preprocessed(pre, case_id)
        x, brain = brain_features(case.image)
        predicted = np.zeros_like(case.label)
        predicted[brain] = classifier.predict(x)
        for region, p, t in zip(
            BRATS_REGIONS, TASKS["brats"].region_stack(predicted), TASKS["brats"].region_stack(case.label)
        ):
            scores[region].append(dice(p, t))
    return {region: float(np.mean(values)) for region, values in scores.items()}


def network_dice(checkpoint: Path, pre: Path, test_ids: list[str]) -> dict[str, float]:
    """Mean hard Dice per region of a trained checkpoint on the held-out volumes (numpy)."""
    model, _, _ = model_from_checkpoint(checkpoint)
    scores: dict[str, list[float]] = {region: [] for region in BRATS_REGIONS}
    for case_id in test_ids:
        case = load_preprocessed(pre, case_id)
        with torch.no_grad():
            probabilities = predict_volume(model, torch.from_numpy(case.image), "sigmoid")
        predicted = (probabilities > 0.5).numpy()
        for region, p, t in zip(BRATS_REGIONS, predicted, TASKS["brats"].region_stack(case.label)):
            scores[region].append(dice(p, t))
    return {region: float(np.mean(values)) for region, values in scores.items()}


def validation_curve(log: Path) -> str:
    """'epoch:mean Dice' of every validation in a run's log.csv."""
    with log.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["val_mean_dice"]]
    return " ".join(f"{row['epoch']}:{float(row['val_mean_dice']):.3f}" for row in rows)


def demo_experiment(args: argparse.Namespace, memory_saving: bool) -> Experiment:
    return Experiment.from_dict(
        {
            "name": "quality_bar_" + ("reversible" if memory_saving else "twin"),
            "task": "brats",
            "model": "partially_reversible",
            "model_params": {
                "channels": args.channels,
                "groups": args.groups,
                "norm": args.norm,
                "memory_saving": memory_saving,
                **({"head_norm": True} if args.head_norm else {}),
            },
            "loss": args.loss,
            "loss_params": {} if args.smooth is None else {"smooth": args.smooth},
            "augmentation": args.augmentation,
            "patch_size": args.patch,
            "optimizer": "adam",
            "lr": args.lr,
            "weight_decay": args.weight_decay,
            "grad_clip_norm": args.grad_clip,
            "warmup_steps": args.warmup,
            "milestones": args.milestones,
            "gamma": args.gamma,
            "batch_size": args.batch,
            "accumulation": args.accumulation,
            "epochs": args.epochs,
            "max_steps_per_epoch": args.steps,
            "validate_every": args.validate_every,
            "seed": args.seed,
            "ema_alpha": args.ema_alpha,
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", help="keep data and runs here (default: a temporary folder)")
    parser.add_argument("--channels", type=lambda s: [int(c) for c in s.split(",")], default=[16, 32, 64, 128])
    parser.add_argument("--groups", type=int, default=8)
    parser.add_argument("--norm", default="group", choices=("group", "instance"))
    parser.add_argument(
        "--head-norm", action="store_true", help="model_params.head_norm: Norm-LeakyReLU before the head"
    )
    parser.add_argument("--loss", default="bruegger2019", help="a preset of revunet.training.losses.LOSSES")
    parser.add_argument("--smooth", type=float, default=None, help="Dice smoothing (default: the loss preset's, 1)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--milestones",
        type=lambda s: [int(c) for c in s.split(",") if c],
        default=[35],
        help="epochs after which the lr is multiplied by --gamma, comma-separated",
    )
    parser.add_argument("--gamma", type=float, default=0.2)
    parser.add_argument("--weight-decay", type=float, default=0.0, help="Adam (L2) weight decay")
    parser.add_argument(
        "--grad-clip",
        type=float,
        default=None,
        help="grad_clip_norm: largest global L2 norm of a step's gradient (default: no clipping)",
    )
    parser.add_argument("--warmup", type=int, default=0, help="warmup_steps: linear learning-rate ramp")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--accumulation", type=int, default=1, help="micro-batches per optimiser step (--steps counts optimiser steps)"
    )
    parser.add_argument("--validate-every", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--steps", type=int, default=8, help="max_steps_per_epoch")
    parser.add_argument("--augmentation", default="none")
    parser.add_argument(
        "--patch",
        type=lambda s: [int(c) for c in s.split(",")] if s else None,
        default=[32, 48, 32],
        help="training patch X,Y,Z ('' for the whole 48x64x48 volume; validation is always whole)",
    )
    parser.add_argument(
        "--ema-alpha",
        type=float,
        default=0.0,
        help="EMA of the validation Dice that picks best.pt (0.95 in the paper; 0: the best validation)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--twin", action=argparse.BooleanOptionalAction, default=True, help="also train the twin")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        pre, split_path = prepare(work)
        split = read_split(split_path)
        baseline = voxel_baseline(pre, split.train, split.held_out)
        results = {"voxel classifier": (baseline, None, None)}
        curves: dict[str, str] = {}
        for memory_saving in (True, False) if args.twin else (True,):
            experiment = demo_experiment(args, memory_saving)
            recipe = hashlib.sha1(json.dumps(experiment.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
            out = work / "runs" / f"{experiment.name}_{recipe}"  # one folder per recipe: reruns resume or skip
            reused = (out / "summary.json").is_file()
            cpu = time.process_time()
            summary = train(experiment, pre, split_path, out, device="cpu", progress=False)
            # with one thread: about the wall time on an idle core; None for a run finished earlier
            cpu = None if reused else time.process_time() - cpu
            scores = network_dice(out / "best.pt", pre, split.held_out)
            results[experiment.name] = (scores, summary, cpu)
            curves[experiment.name] = validation_curve(out / "log.csv")
            # the final weights, not chosen on the held-out cases: the unbiased figure
            last = network_dice(out / "last.pt", pre, split.held_out)
            results[experiment.name + " (last.pt)"] = (last, None, None)

    sample = "patch " + "x".join(map(str, args.patch)) if args.patch else "full 48x64x48 volume"
    milestones = f", x{args.gamma:g} after epoch(s) {args.milestones}" if args.milestones else ""
    print(
        f"\nsetup: channels {args.channels}, {args.norm} norm (groups {args.groups}), Adam lr {args.lr:g}{milestones}, "
        f"weight decay {args.weight_decay:g}, gradient clipping {args.grad_clip}, warm-up {args.warmup} steps, "
        f"EMA alpha {args.ema_alpha}, {args.epochs} epochs x {args.steps} steps "
        f"(batch {args.batch} x accumulation {args.accumulation}, {sample}), "
        f"validation every {args.validate_every} epoch(s), "
        f"loss {args.loss} (smooth {args.smooth or 'preset'}), augmentation {args.augmentation}, "
        f"seed {args.seed}, {args.threads} thread(s); {len(split.train)} train / {len(split.held_out)} held-out cases"
    )
    columns = ("WT", "TC", "ET", "mean", "/voxel", "best ep", "wall s", "cpu s", "cpu s/ep")
    print(f"{'model':<32} " + " ".join(f"{c:>{max(6, len(c))}}" for c in columns))
    reference = np.mean(list(baseline.values()))
    for name, (scores, summary, cpu) in results.items():
        mean = float(np.mean(list(scores.values())))
        extra = (
            ""
            if summary is None
            else (
                f" {summary['best_epoch']:>7} {summary['train_seconds']:>7.1f} "
                + ("  (reused run)" if cpu is None else f"{cpu:>7.1f} {cpu / summary['epochs_completed']:>8.1f}")
            )
        )
        print(
            f"{name:<32} {scores['WT']:6.3f} {scores['TC']:6.3f} {scores['ET']:6.3f} {mean:6.3f} "
            f"{mean / reference:7.2f}{extra}"
        )

    for name, curve in curves.items():
        print(f"validation mean Dice of {name} (epoch:Dice): {curve}")


if __name__ == "__main__":
    main()

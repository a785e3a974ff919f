"""`revunet synth`: write the embedded synthetic BraTS-like or iSeg-like dataset.

See :mod:`revunet.data.synth` for what the subjects look like and how the files are laid out.
"""

from __future__ import annotations

import argparse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _spacing(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm, got {text!r}")
    if not 0.5 <= value <= 8.0:
        raise argparse.ArgumentTypeError(f"--spacing must lie in [0.5, 8] mm, got {text!r}")
    return value


def _synth(args: argparse.Namespace) -> int:
    from revunet.data.synth import write_dataset

    try:
        summary = write_dataset(args.task, args.out, args.subjects, args.spacing, args.seed, force=args.force)
    except FileExistsError as error:
        raise SystemExit(f"revunet synth: {error}")
    print(summary.describe())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet synth`` to the command-line parser."""
    from revunet.data.synth import DEFAULT_SPACING, DEFAULT_SUBJECTS

    synth = commands.add_parser(
        "synth",
        help="write the synthetic BraTS-like or iSeg-like dataset (real anatomy, real on-disk layout)",
        description="Write synthetic subjects built on the MNI ICBM152 2009a template (shipped with nilearn) "
        "in the real BraTS 2020 or iSeg 2019 layout. Seeded and deterministic; an identical dataset "
        "already in place is left alone, and a dataset folder appears only once complete.",
    )
    synth.add_argument("--task", choices=("brats", "iseg"), required=True)
    synth.add_argument("--out", required=True, help="folder to write the dataset folder into")
    synth.add_argument(
        "--subjects",
        type=_positive_int,
        help=f"number of subjects (default {DEFAULT_SUBJECTS['brats']} for brats, {DEFAULT_SUBJECTS['iseg']} for iseg)",
    )
    synth.add_argument(
        "--spacing", type=_spacing, default=DEFAULT_SPACING, help="isotropic voxel size in mm (default %(default)s)"
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    synth.add_argument("--force", action="store_true", help="regenerate even if an identical dataset is in place")
    synth.set_defaults(run=_synth)

"""`revunet synth`: write the embedded synthetic BraTS-like or iSeg-like dataset.

See :mod:`revunet.data.synth.generate` for what the subjects look like and how the files are laid out,
and :mod:`revunet.data.synth.release` for ``--release``, the stand-ins of the official training releases.
"""

from __future__ import annotations

import argparse

from revunet.catalog import SYNTHETIC_LAYOUTS, TASK_NAMES
from revunet.commands._arguments import positive_int


def _spacing(text: str) -> float:
    from revunet.data.synth.subjects import MAX_SPACING, MIN_SPACING

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a voxel size in mm, got {text!r}") from None
    if not MIN_SPACING <= value <= MAX_SPACING:
        raise argparse.ArgumentTypeError(f"--spacing must lie in [{MIN_SPACING:g}, {MAX_SPACING:g}] mm, got {text!r}")
    return value


def _synth(args: argparse.Namespace) -> int:
    from revunet.data.synth.generate import write_dataset

    if args.task is None and args.layout is None:
        raise SystemExit("revunet synth: give --task or --layout")
    try:
        summary = write_dataset(
            args.task,
            args.out,
            args.subjects,
            args.spacing,
            args.seed,
            force=args.force,
            layout=args.layout,
            release=args.release,
        )
    except (FileExistsError, ValueError) as error:
        raise SystemExit(f"revunet synth: {error}") from None
    print(summary.describe())
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet synth`` to the command-line parser (importing nothing heavy: defaults live in the data module)."""
    synth = commands.add_parser(
        "synth",
        help="write the synthetic BraTS-like or iSeg-like dataset (real anatomy, real on-disk layout)",
        description="Write synthetic subjects built on the MNI ICBM152 2009a template (shipped with nilearn) "
        "in the real BraTS 2020, BraTS 2018 or iSeg 2019 layout. Seeded and deterministic; an identical dataset "
        "already in place is left alone, and a dataset folder appears only once complete.",
    )
    synth.add_argument("--task", choices=TASK_NAMES, help="the task (implied by --layout)")
    synth.add_argument(
        "--layout",
        choices=tuple(SYNTHETIC_LAYOUTS),
        help="on-disk layout: brats2020 (default for brats), brats2018 (HGG/LGG, .nii), iseg",
    )
    synth.add_argument("--out", required=True, help="folder to write the dataset folder into")
    synth.add_argument("--subjects", type=positive_int, help="number of subjects (default 20 for brats, 10 for iseg)")
    synth.add_argument(
        "--spacing", type=_spacing, help="isotropic voxel size in mm, 1 to 8 (8 with --release, else default 3)"
    )
    synth.add_argument(
        "--release",
        action="store_true",
        help="a stand-in of the layout's official training release: its case count (BraTS 2020 369, "
        "BraTS 2018 285 as 210 HGG + 75 LGG, iSeg 10), case names and quirks (BraTS 2020 case 355's "
        "label W39_1998.09.19_Segm.nii), to rehearse the paper preset's data stages",
    )
    synth.add_argument("--seed", type=int, default=0, help="random seed (default %(default)s)")
    synth.add_argument("--force", action="store_true", help="regenerate even if an identical dataset is in place")
    synth.set_defaults(run=_synth)

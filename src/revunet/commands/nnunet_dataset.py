"""`revunet nnunet-dataset`: write a BraTS-like dataset as an nnU-Net v2 raw dataset (DatasetNNN_Name).

See :mod:`revunet.integrations.nnunet.raw` for the folder it writes and the label renumbering.
"""

from __future__ import annotations

import argparse

from revunet.commands._arguments import positive_int

# The BraTS layouts of revunet.data.layouts, spelled out so that building the parser imports no data code.
LAYOUT_HELP = "auto, brats2018, brats2020, brats2021, brats2023, msd"


def _nnunet_dataset(args: argparse.Namespace) -> int:
    from revunet.integrations.nnunet.raw import write_raw_dataset

    try:
        folder = write_raw_dataset(args.source, args.out, args.id, args.name, layout=args.layout, force=args.force)
    except (ValueError, OSError) as error:  # LayoutError and CaseError are ValueErrors; FileExistsError an OSError
        raise SystemExit(f"revunet nnunet-dataset: {error}") from None
    training = len(list((folder / "labelsTr").iterdir()))
    test = len(list((folder / "imagesTs").glob("*_0000.nii.gz")))
    unlabelled = f" and {test} unlabelled ones in imagesTs" if test else ""
    print(f"nnU-Net dataset {folder}: {training} training cases{unlabelled}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet nnunet-dataset`` to the command-line parser."""
    parser = commands.add_parser(
        "nnunet-dataset",
        help="write a BraTS-like dataset as an nnU-Net v2 raw dataset (DatasetNNN_Name)",
        description="Convert a BraTS 2018/2020/2021/2023 or Decathlon Task01 folder into nnU-Net v2's raw "
        "format: imagesTr/<case>_0000..0003.nii.gz (T1, T1ce, T2, FLAIR), labelsTr/<case>.nii.gz with the "
        "labels renumbered edema 1, necrosis 2, enhancing 3, and a dataset.json for region-based training "
        "(whole tumor, tumor core, enhancing tumor). Every case is checked first; the folder appears only once complete.",
    )
    parser.add_argument("--source", required=True, help="the dataset folder (e.g. MICCAI_BraTS2020_TrainingData)")
    parser.add_argument("--out", required=True, help="nnU-Net's raw folder (nnUNet_raw) to write the dataset into")
    parser.add_argument("--id", required=True, type=positive_int, help="the nnU-Net dataset id, 1 to 999")
    parser.add_argument("--name", default="RevunetBraTS", help="the dataset name after the id (default %(default)s)")
    parser.add_argument("--layout", default="auto", help=f"one of {LAYOUT_HELP} (default: auto, detect it)")
    parser.add_argument("--force", action="store_true", help="replace the dataset folder if it exists")
    parser.set_defaults(run=_nnunet_dataset)

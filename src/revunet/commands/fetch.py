"""`revunet fetch`: download a dataset archive (default: Decathlon Task01_BrainTumour) and extract it.

See :mod:`revunet.data.download`: the download resumes after an interruption and is checked
against a checksum when one is given; extraction is atomic and done only once.
"""

from __future__ import annotations

import argparse
import posixpath
import sys
import tarfile
import urllib.parse
from pathlib import Path


def _archive_name(url: str) -> str:
    name = posixpath.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
    if not name:
        raise SystemExit(f"revunet fetch: cannot tell the archive's file name from --url {url!r}")
    return name


def _fetch(args: argparse.Namespace) -> int:
    from revunet.data.download import MSD_TASK01, ArchiveError, DownloadError, download, extract_tar, is_extracted

    url = args.url or MSD_TASK01.url
    if args.url or args.sha256 or args.md5:
        sha256, md5 = args.sha256, args.md5
    else:  # the default archive with its configured checksum (None until a trusted one is set)
        sha256, md5 = MSD_TASK01.sha256, MSD_TASK01.md5
    out = Path(args.out)
    archive = out / _archive_name(url)
    if is_extracted(archive, out):
        print(f"{archive.name} is already extracted in {out}")
        return 0
    if not sha256 and not md5:
        print(
            f"warning: no checksum for {url}: the download's integrity will not be verified; pass --sha256 or --md5",
            file=sys.stderr,
        )
    try:
        download(url, archive, sha256=sha256, md5=md5)
        if not tarfile.is_tarfile(archive):
            print(f"downloaded {archive} (not a tar archive: nothing extracted)")
            return 0
        extract_tar(archive, out)
    except (DownloadError, ArchiveError, OSError) as error:
        raise SystemExit(f"revunet fetch: {error}") from None
    if args.remove_archive:
        archive.unlink()
    folders = [p for p in sorted(out.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    hint = folders[0] if len(folders) == 1 else out
    print(f"extracted {archive.name} into {out}; next: revunet cases {hint} --out cases.csv")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``revunet fetch`` to the command-line parser."""
    fetch = commands.add_parser(
        "fetch",
        help="download and extract a dataset archive (default: Decathlon Task01_BrainTumour, about 7 GB)",
        description="Download a dataset archive with resume and checksum verification, then extract it "
        "safely and atomically. Without --url it fetches the Medical Segmentation Decathlon's "
        "Task01_BrainTumour.tar.",
    )
    fetch.add_argument("--url", help="archive to download (default: the Decathlon Task01_BrainTumour.tar)")
    checksum = fetch.add_mutually_exclusive_group()
    checksum.add_argument("--sha256", help="expected SHA-256 of the archive (hex)")
    checksum.add_argument("--md5", help="expected MD5 of the archive (hex)")
    fetch.add_argument("--out", required=True, help="folder for the archive and its extracted contents")
    fetch.add_argument("--remove-archive", action="store_true", help="delete the archive after extracting it")
    fetch.set_defaults(run=_fetch)

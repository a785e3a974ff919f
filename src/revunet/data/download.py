"""Downloading and unpacking a public dataset archive (the Decathlon's Task01_BrainTumour).

The archive is about 7 GB, so the download must survive interruptions: bytes go to
``<destination>.part``, a later call resumes it with an HTTP Range request (or starts over
when the server ignores Range), and only a complete file whose checksum matches is renamed
to ``destination``. Extraction happens in a temporary folder and is moved into place by
rename, with a marker file that makes a second call a no-op.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from revunet.atomic import write_text_atomic


@dataclass(frozen=True)
class ArchiveSource:
    """Where a dataset archive lives and how to check it."""

    url: str
    sha256: str | None = None
    md5: str | None = None


# Medical Segmentation Decathlon, Task01_BrainTumour (the BraTS 2016/2017 cases, 4-D NIfTI).
# No checksum is set because none could be verified offline when this was written: pass one with
# `revunet fetch --sha256/--md5` (or set it here) once you have a trusted value.
MSD_TASK01 = ArchiveSource(url="https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar")

DEFAULT_CHUNK_SIZE = 1 << 20


class DownloadError(OSError):
    """The download failed; a partial ``.part`` file is kept so that the next call resumes it."""


class ChecksumError(DownloadError):
    """The downloaded file does not have the expected digest (it is deleted, never renamed)."""


class ArchiveError(ValueError):
    """An archive cannot be extracted."""


class UnsafeArchiveError(ArchiveError):
    """A tar member would land outside the destination (absolute path, '..', link, device)."""


def file_digests(
    path: str | os.PathLike[str], algorithms: tuple[str, ...], chunk_size: int = DEFAULT_CHUNK_SIZE
) -> dict[str, str]:
    """Hex digests of a file for each of ``algorithms``, in one pass over the file."""
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as stream:
        while chunk := stream.read(chunk_size):
            for hasher in hashers.values():
                hasher.update(chunk)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def verify_checksum(path: str | os.PathLike[str], sha256: str | None = None, md5: str | None = None) -> None:
    """Raise ChecksumError naming the file, the expected and the actual digest when they differ."""
    expected = {name: value.strip().lower() for name, value in (("sha256", sha256), ("md5", md5)) if value}
    if not expected:
        return
    actual = file_digests(path, tuple(expected))
    for name, value in expected.items():
        if actual[name] != value:
            raise ChecksumError(f"{path}: {name} mismatch: expected {value}, got {actual[name]}")


def _progress(total: int | None, initial: int, name: str, enabled: bool | None) -> tqdm:
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=name, disable=not show)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    """Open ``url``, asking for the bytes from ``offset`` on when resuming."""
    request = urllib.request.Request(url, headers={"User-Agent": "revunet"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _body_start(response: http.client.HTTPResponse, offset: int) -> int | None:
    """Where the response's body starts in the file: 0 for a full body, ``offset`` for the range
    asked for, None for a range that is not the one asked for (the download must start over)."""
    if response.status != 206:
        return 0
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return offset if match and int(match.group(1)) == offset else None


class _StartOver(Exception):
    """The partial file cannot be resumed; it has been deleted and the download must start again."""


def _open_part(url: str, part: Path, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """The response that continues ``part`` from ``offset``; None when ``part`` is already complete."""
    try:
        return _open(url, offset, timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not offset:
            raise DownloadError(f"cannot download {url}: HTTP {error.code} {error.reason}") from error
        # 416: nothing left after `offset`. If the server's size equals the partial file, it is complete.
        error.close()
        size = re.search(r"/(\d+)$", error.headers.get("Content-Range", "") or "")
        if size and int(size.group(1)) == offset:
            return None
        part.unlink()
        raise _StartOver from None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(f"cannot download {url}: {getattr(error, 'reason', error)}") from error


def _receive(
    response: http.client.HTTPResponse,
    url: str,
    part: Path,
    offset: int,
    chunk_size: int,
    bar_name: str,
    progress: bool | None,
) -> None:
    """Write the response's body into ``part`` where it belongs, fsynced; DownloadError when it is cut short."""
    with response:
        start = _body_start(response, offset)
        if start is None:
            response.close()
            part.unlink()
            raise _StartOver
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        written = start
        with open(part, "r+b" if start else "wb") as stream, _progress(total, start, bar_name, progress) as bar:
            stream.seek(start)
            stream.truncate()  # a server that ignored Range sends everything: start over
            try:
                while chunk := response.read(chunk_size):
                    stream.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"download of {url} interrupted after {written} bytes ({error!r}); "
                    f"{part} is kept, run again to resume"
                ) from error
            finally:
                stream.flush()
                os.fsync(stream.fileno())
        if total is not None and written != total:
            raise DownloadError(
                f"download of {url} ended after {written} of {total} bytes; {part} is kept, run again to resume"
            )


def download(
    url: str,
    destination: str | os.PathLike[str],
    sha256: str | None = None,
    md5: str | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download ``url`` to ``destination``: resumable, checksum-verified, renamed into place atomically.

    An existing ``destination`` is kept (and verified when a checksum is given). ``progress``
    None shows a progress bar only on a terminal.
    """
    target = Path(destination)
    if target.exists():
        verify_checksum(target, sha256, md5)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    try:
        response = _open_part(url, part, offset, timeout)
        if response is not None:
            _receive(response, url, part, offset, chunk_size, target.name, progress)
    except _StartOver:
        return download(url, target, sha256, md5, chunk_size, progress, timeout)
    try:
        verify_checksum(part, sha256, md5)
    except ChecksumError as error:
        part.unlink()
        raise ChecksumError(f"{error}; the download ({part}) was deleted, run again to fetch it anew") from None
    os.replace(part, target)
    return target


# --------------------------------------------------------------------------- extraction


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse members that could write outside the extraction folder."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in re.split(r"[/\\]", name):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: absolute path or '..' outside the destination")
    if member.issym() or member.islnk():
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise UnsafeArchiveError(
                f"{archive}: refusing link {name!r} -> {member.linkname!r}: it points outside the destination"
            )
    elif not (member.isfile() or member.isdir()):
        raise UnsafeArchiveError(f"{archive}: refusing member {name!r}: not a regular file or folder (device, fifo)")


def _marker(archive: Path, destination: Path) -> Path:
    return destination / f".{archive.name}.extracted"


def is_extracted(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> bool:
    """Whether :func:`extract_tar` finished extracting ``archive`` into ``destination`` (and it is still there)."""
    marker = _marker(Path(archive), Path(destination))
    if not marker.is_file():
        return False
    entries = json.loads(marker.read_text())["entries"]
    return all((Path(destination) / entry).exists() for entry in entries)


def extract_tar(archive: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
    """Extract ``archive`` into ``destination`` safely and atomically; a second call does nothing.

    Members are unpacked into a temporary folder inside ``destination`` and each top-level entry
    is renamed into place; a marker file listing them records a finished extraction. An existing
    entry without the marker is never overwritten (it may be someone else's data).
    """
    archive = Path(archive)
    destination = Path(destination)
    marker = _marker(archive, destination)
    if is_extracted(archive, destination):
        return destination
    marker.unlink(missing_ok=True)  # extracted data was removed since: extract again

    destination.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            entries = sorted({posixpath.normpath(m.name).split("/")[0] for m in members} - {"."})
            clashes = [entry for entry in entries if (destination / entry).exists()]
            if clashes:
                raise FileExistsError(
                    f"cannot extract {archive} into {destination}: {', '.join(clashes)} already exist(s) without the "
                    f"marker of a finished extraction; remove them and run again"
                )
            staging = Path(tempfile.mkdtemp(prefix=f".{archive.name}.", suffix=".partial", dir=destination))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # Python < 3.11.4: the members were checked above
                    tar.extractall(staging, members=members)
                for entry in entries:
                    os.replace(staging / entry, destination / entry)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except getattr(tarfile, "FilterError", ()) as error:  # tarfile's own "data" filter refused a member
        raise UnsafeArchiveError(f"{archive}: refusing to extract: {error}") from error
    except tarfile.TarError as error:
        raise ArchiveError(f"{archive}: not a readable tar archive ({error})") from error
    write_text_atomic(marker, json.dumps({"archive": archive.name, "entries": entries}, indent=2) + "\n")
    return destination

"""Downloading and extracting dataset archives, against a local HTTP server (never the internet).

The server is a small ``BaseHTTPRequestHandler`` on 127.0.0.1 that serves one generated tar
archive (a miniature Decathlon Task01 folder) and can honour or ignore Range requests, or cut
the connection midway, so that resume, restart and checksum handling are all exercised.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from revunet.cli import main
from revunet.data.download import (
    MSD_TASK01,
    ArchiveError,
    ChecksumError,
    DownloadError,
    UnsafeArchiveError,
    download,
    extract_tar,
    is_extracted,
)
from revunet.data.io import load_case
from revunet.data.layouts import detect_layout, find_cases

# --------------------------------------------------------------------------- a local archive server


@dataclass
class ServerState:
    payload: bytes
    honour_range: bool = True
    cut_after: int | None = None  # send only this many body bytes, then drop the connection
    wrong_range: bool = False  # answer a Range request with 206 but the bytes from 0 (a broken server)
    ranges: list[str | None] = field(default_factory=list)  # the Range header of every request
    bytes_sent: int = 0


class ArchiveHandler(BaseHTTPRequestHandler):
    """Serves ``state.payload`` at /archive.tar, with optional Range support (RFC 7233, single range)."""

    state: ServerState  # set on a per-server subclass

    def do_GET(self) -> None:  # the name http.server dispatches to
        state = self.state
        if self.path != "/archive.tar":
            self.send_error(404, "Not Found")
            return
        requested = self.headers.get("Range")
        state.ranges.append(requested)
        size = len(state.payload)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and state.wrong_range:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{size - 1}/{size}")
        elif match and state.honour_range:
            start = int(match.group(1))
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(size - start))
        self.send_header("Content-Type", "application/x-tar")
        self.end_headers()
        body = state.payload[start:]
        if state.cut_after is not None:
            body = body[: state.cut_after]
            self.close_connection = True
        self.wfile.write(body)
        state.bytes_sent += len(body)

    def log_message(self, format: str, *args: object) -> None:  # keep test output quiet
        pass


@contextlib.contextmanager
def serve(state: ServerState) -> Iterator[str]:
    """Run an archive server in a thread; yields the archive's URL."""
    handler = type("Handler", (ArchiveHandler,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/archive.tar"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """A proxy configured in the environment must not intercept requests to the local server."""
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")


# --------------------------------------------------------------------------- a miniature Decathlon archive

SHAPE = (8, 8, 6)


def save(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def make_msd_archive(folder: Path) -> bytes:
    """Bytes of a tar holding ``Task01_BrainTumour/`` with two training and one test case."""
    root = folder / "Task01_BrainTumour"
    brain = np.zeros(SHAPE, dtype=np.float32)
    brain[1:7, 1:7, 1:5] = 1
    channels = np.stack([brain * value for value in (4.0, 1.0, 2.0, 3.0)], axis=-1)  # FLAIR, T1w, T1gd, T2w
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 1
    label[4, 4, 3] = 3
    for case in ("BRATS_001", "BRATS_002"):
        save(root / "imagesTr" / f"{case}.nii.gz", channels)
        save(root / "labelsTr" / f"{case}.nii.gz", label)
    save(root / "imagesTs" / "BRATS_485.nii.gz", channels)
    (root / "imagesTr" / "._BRATS_001.nii.gz").write_bytes(b"\x00\x05\x16\x07")
    (root / "dataset.json").write_text(
        '{"name": "BRATS", "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}'
    )
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        tar.add(root, arcname="Task01_BrainTumour")
    return stream.getvalue()


@pytest.fixture(scope="module")
def archive_bytes(tmp_path_factory) -> bytes:
    return make_msd_archive(tmp_path_factory.mktemp("msd-source"))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- download


def test_msd_default_source():
    assert MSD_TASK01.url == "https://msd-for-monai.s3-us-west-2.amazonaws.com/Task01_BrainTumour.tar"
    assert MSD_TASK01.sha256 is None and MSD_TASK01.md5 is None, "no checksum could be verified offline"


def test_full_download_verifies_checksums(tmp_path, archive_bytes):
    state = ServerState(archive_bytes)
    with serve(state) as url:
        target = download(url, tmp_path / "dl" / "Task01_BrainTumour.tar", sha256=sha256(archive_bytes), progress=False)
        assert target.read_bytes() == archive_bytes
        assert not target.with_name(target.name + ".part").exists()
        md5 = hashlib.md5(archive_bytes).hexdigest().upper()  # digests are compared case-insensitively
        again = download(url, tmp_path / "again.tar", md5=md5, chunk_size=1000, progress=True)  # with a tqdm bar
        assert again.read_bytes() == archive_bytes
    assert state.ranges == [None, None]


def test_wrong_checksum_raises_and_leaves_no_file(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    wrong = "0" * 64
    with serve(ServerState(archive_bytes)) as url, pytest.raises(ChecksumError) as error:
        download(url, target, sha256=wrong, progress=False)
    message = str(error.value)
    assert str(target) in message and wrong in message and sha256(archive_bytes) in message
    assert not target.exists() and not target.with_name(target.name + ".part").exists()


def test_resume_from_partial_file_with_range_request(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    done = len(archive_bytes) // 3
    target.with_name(target.name + ".part").write_bytes(archive_bytes[:done])
    state = ServerState(archive_bytes)
    with serve(state) as url:
        download(url, target, sha256=sha256(archive_bytes), progress=False)
    assert target.read_bytes() == archive_bytes
    assert state.ranges == [f"bytes={done}-"] and state.bytes_sent == len(archive_bytes) - done


def test_server_ignoring_range_restarts_the_download(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    stale = b"stale bytes that must not survive"
    target.with_name(target.name + ".part").write_bytes(stale)
    state = ServerState(archive_bytes, honour_range=False)
    with serve(state) as url:
        download(url, target, sha256=sha256(archive_bytes), progress=False)
    assert target.read_bytes() == archive_bytes
    assert state.ranges == [f"bytes={len(stale)}-"] and state.bytes_sent == len(archive_bytes)


def test_range_answer_for_other_bytes_restarts_the_download(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    target.with_name(target.name + ".part").write_bytes(archive_bytes[:100])
    state = ServerState(archive_bytes, wrong_range=True)
    with serve(state) as url:
        download(url, target, sha256=sha256(archive_bytes), progress=False)
    assert target.read_bytes() == archive_bytes
    assert state.ranges == ["bytes=100-", None], "a 206 for other bytes than asked for is not appended"


def test_interrupted_download_keeps_part_and_resumes(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    part = target.with_name(target.name + ".part")
    cut = len(archive_bytes) // 2
    state = ServerState(archive_bytes, cut_after=cut)
    with serve(state) as url:
        with pytest.raises(DownloadError, match=r"(interrupted|ended) after .*run again to resume"):
            download(url, target, sha256=sha256(archive_bytes), chunk_size=4096, progress=False)
        assert not target.exists() and part.read_bytes() == archive_bytes[:cut]
        state.cut_after = None
        download(url, target, sha256=sha256(archive_bytes), progress=False)
    assert target.read_bytes() == archive_bytes and not part.exists()
    assert state.ranges == [None, f"bytes={cut}-"]


def test_complete_part_file_answered_416_is_used(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    target.with_name(target.name + ".part").write_bytes(archive_bytes)
    state = ServerState(archive_bytes)
    with serve(state) as url:
        download(url, target, sha256=sha256(archive_bytes), progress=False)
    assert target.read_bytes() == archive_bytes and state.bytes_sent == 0


def test_existing_file_is_not_downloaded_again(tmp_path, archive_bytes):
    target = tmp_path / "Task01_BrainTumour.tar"
    target.write_bytes(archive_bytes)
    state = ServerState(archive_bytes)
    with serve(state) as url:
        download(url, target, sha256=sha256(archive_bytes), progress=False)
        with pytest.raises(ChecksumError, match="sha256 mismatch"):
            download(url, target, sha256="f" * 64, progress=False)
    assert state.ranges == [] and target.exists()


def test_http_error_names_url_and_status(tmp_path, archive_bytes):
    with serve(ServerState(archive_bytes)) as url:
        missing = url.replace("archive.tar", "missing.tar")
        with pytest.raises(DownloadError, match=rf"cannot download {re.escape(missing)}: HTTP 404"):
            download(missing, tmp_path / "missing.tar", progress=False)


# --------------------------------------------------------------------------- extraction


def test_extract_then_find_cases_detects_msd(tmp_path, archive_bytes):
    archive = tmp_path / "Task01_BrainTumour.tar"
    archive.write_bytes(archive_bytes)
    out = tmp_path / "data"
    assert extract_tar(archive, out) == out
    assert is_extracted(archive, out)
    assert sorted(p.name for p in out.iterdir()) == [".Task01_BrainTumour.tar.extracted", "Task01_BrainTumour"]
    root = out / "Task01_BrainTumour"
    assert detect_layout(root) == "msd"
    table = find_cases(root)
    assert table["case_id"].tolist() == ["BRATS_001", "BRATS_002", "BRATS_485"]
    case = load_case(table.iloc[0])
    assert {m: float(a.max()) for m, a in case.images.items()} == {"t1": 1.0, "t1ce": 2.0, "t2": 3.0, "flair": 4.0}
    assert set(np.unique(case.label).tolist()) == {0, 2, 4}  # Decathlon 1 (edema) -> 2, 3 (enhancing) -> 4

    archive.write_bytes(b"no longer a tar")  # a second call must not even open the archive
    assert extract_tar(archive, out) == out


def test_extract_refuses_to_overwrite_foreign_data(tmp_path, archive_bytes):
    archive = tmp_path / "Task01_BrainTumour.tar"
    archive.write_bytes(archive_bytes)
    (tmp_path / "out" / "Task01_BrainTumour").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="Task01_BrainTumour already exist"):
        extract_tar(archive, tmp_path / "out")


def tar_with(member: tarfile.TarInfo, data: bytes = b"") -> bytes:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        ok = tarfile.TarInfo("Task01_BrainTumour/dataset.json")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"{}"))
        member.size = len(data) if member.isfile() else 0
        tar.addfile(member, io.BytesIO(data) if member.isfile() else None)
    return stream.getvalue()


def symlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    return info


def fifo(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.FIFOTYPE
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (tarfile.TarInfo("../evil.txt"), "'..'"),
        (tarfile.TarInfo("Task01_BrainTumour/../../evil.txt"), "'..'"),
        (tarfile.TarInfo("Task01_BrainTumour/sub/../x.txt"), "'..'"),
        (tarfile.TarInfo("/tmp/evil.txt"), "absolute path"),
        (symlink("Task01_BrainTumour/passwd", "/etc/passwd"), "points outside"),
        (symlink("Task01_BrainTumour/up", "../../outside"), "points outside"),
        (fifo("Task01_BrainTumour/pipe"), "not a regular file"),
    ],
)
def test_unsafe_tar_members_are_refused(tmp_path, member, message):
    archive = tmp_path / "evil.tar"
    archive.write_bytes(tar_with(member, b"pwned"))
    out = tmp_path / "sub" / "out"
    with pytest.raises(UnsafeArchiveError, match=message) as error:
        extract_tar(archive, out)
    assert str(archive) in str(error.value) and member.name in str(error.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "sub" / "evil.txt").exists()
    assert not is_extracted(archive, out) and not any(out.iterdir()), "nothing is extracted from an unsafe archive"


def test_not_a_tar_archive(tmp_path):
    archive = tmp_path / "broken.tar"
    archive.write_bytes(b"<html>Access denied</html>")
    with pytest.raises(ArchiveError, match="not a readable tar archive"):
        extract_tar(archive, tmp_path / "out")


# --------------------------------------------------------------------------- revunet fetch


def test_fetch_command_downloads_extracts_and_is_idempotent(tmp_path, archive_bytes, capsys):
    out = tmp_path / "msd"
    state = ServerState(archive_bytes)
    with serve(state) as url:
        assert main(["fetch", "--url", url, "--sha256", sha256(archive_bytes), "--out", str(out)]) == 0
        captured = capsys.readouterr()
        assert "warning" not in captured.err
        assert f"next: revunet cases {out / 'Task01_BrainTumour'}" in captured.out
        assert detect_layout(out) == "msd" and len(find_cases(out)) == 3
        assert main(["fetch", "--url", url, "--out", str(out)]) == 0
        assert "already extracted" in capsys.readouterr().out
    assert state.ranges == [None], "the second call downloads nothing"


def test_fetch_without_checksum_warns_and_bad_checksum_exits(tmp_path, archive_bytes, capsys):
    with serve(ServerState(archive_bytes)) as url:
        assert main(["fetch", "--url", url, "--out", str(tmp_path / "a"), "--remove-archive"]) == 0
        assert "warning: no checksum" in capsys.readouterr().err
        assert not (tmp_path / "a" / "archive.tar").exists() and is_extracted(
            tmp_path / "a" / "archive.tar", tmp_path / "a"
        )
        with pytest.raises(SystemExit, match="md5 mismatch: expected 0+, got [0-9a-f]{32}"):
            main(["fetch", "--url", url, "--md5", "0" * 32, "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b" / "archive.tar").exists()

"""Atomic writes: an interrupted write leaves the old file and no temporary file behind."""

from __future__ import annotations

import numpy as np
import pytest

from revunet.atomic import open_atomic, write_bytes_atomic, write_text_atomic


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "table.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError):
        with open_atomic(target, "w") as stream:
            stream.write("half of the new")
            raise RuntimeError("killed")
    assert target.read_text() == "old\n"
    assert [p.name for p in target.parent.iterdir()] == ["table.csv"]


def test_bytes_and_numpy_round_trip(tmp_path):
    assert write_bytes_atomic(tmp_path / "b.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    with open_atomic(tmp_path / "a.npz") as stream:
        np.savez(stream, image=np.arange(6.0))
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["image"], np.arange(6.0))
    with pytest.raises(ValueError, match="whole files"):
        with open_atomic(tmp_path / "c", "a"):
            pass


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from revunet.atomic import write_text_atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text_atomic(tmp_path / "atomic.txt", "x")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)

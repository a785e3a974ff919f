"""The `revunet` command line and atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from revunet.atomic import write_text_atomic
from revunet.cli import main

SEQUENCE = "revunet.models.blocks:residual_coupling_sequence"


def test_memory_command_writes_json_and_csv(tmp_path, capsys):
    json_out = tmp_path / "sub" / "m.json"
    kwargs = '{"channels": 16, "depth": 2, "groups": 4}'
    assert (
        main(
            [
                "memory",
                "--model",
                SEQUENCE,
                "--kwargs",
                kwargs,
                "--input-shape",
                "1,16,32,32,32",
                "--out",
                str(json_out),
            ]
        )
        == 0
    )
    row = json.loads(json_out.read_text())
    assert row["mode"] == "fake" and row["input_shape"] == "1x16x32x32x32"
    assert row["inputs_bytes"] == 16 * 32**3 * 4
    assert (
        sum(
            row[f"{c}_bytes"]
            for c in ("parameters", "buffers", "gradients", "optimizer_state", "inputs", "activations")
        )
        == row["peak_bytes"]
    )
    assert "peak" in capsys.readouterr().out

    csv_out = tmp_path / "m.csv"
    main(
        [
            "memory",
            "--model",
            SEQUENCE,
            "--kwargs",
            kwargs,
            "--input-shape",
            "1x16x32x32x32",
            "--mode",
            "cpu",
            "--out",
            str(csv_out),
        ]
    )
    cpu = pd.read_csv(csv_out).iloc[0]
    assert cpu["peak_bytes"] == row["peak_bytes"], "cpu and fake must agree to the byte"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "nocolon"], "package.module:factory"),
        (["--model", "revunet.nonexistent:f"], "cannot import module 'revunet.nonexistent'"),
        (["--model", "revunet.models.blocks:nothing"], "no callable 'nothing'"),
        (["--model", SEQUENCE, "--kwargs", "[1]"], "JSON object"),
        (["--model", SEQUENCE, "--kwargs", '{"channels": 4, "depth": 1, "groups": 1, "bogus": 1}'], "bogus"),
        (
            ["--model", SEQUENCE, "--kwargs", '{"channels": 4, "depth": 1, "groups": 1}', "--out", "x.txt"],
            ".json or .csv",
        ),
    ],
)
def test_memory_command_errors_name_the_problem(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(["memory", "--input-shape", "1,4,4,4,4", *argv])


def test_bad_shape_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["memory", "--model", SEQUENCE, "--input-shape", "1,a,4"])
    assert "--input-shape" in capsys.readouterr().err


def test_atomic_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")
    write_text_atomic(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_failure_keeps_old_content(tmp_path):
    target = tmp_path / "out.txt"
    write_text_atomic(target, "old")

    with pytest.raises(TypeError):
        write_text_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in Path(tmp_path).iterdir()] == ["out.txt"]


def test_building_the_parser_does_not_import_torch():
    """Every workflow job starts `revunet`; importing torch just to parse arguments costs seconds each time."""
    import subprocess
    import sys

    code = "import sys, revunet.cli; revunet.cli.build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_capacity_help_states_the_module_defaults():
    from revunet.cli import build_parser
    from revunet.memory import capacity

    parser = build_parser()
    sub = next(
        a for a in parser._actions if a.dest == "command" or (getattr(a, "choices", None) and "capacity" in a.choices)
    )
    text = " ".join(sub.choices["capacity"].format_help().split())
    assert f"(default {capacity.DEFAULT_BUDGET_GIB:g})" in text
    assert f"(default {capacity.DEFAULT_FIXED_SIZE})" in text
    assert f"(default {capacity.MAX_SIZE})" in text and f"(default {capacity.MAX_DEPTH})" in text
    assert f"(default {capacity.MAX_MULTIPLIER})" in text
    for name in capacity.CAPACITY_MODELS:
        assert name in text


def test_complexity_help_states_the_default_depths():
    from revunet.cli import build_parser
    from revunet.memory.complexity import DEFAULT_DEPTHS

    parser = build_parser()
    sub = next(a for a in parser._actions if getattr(a, "choices", None) and "complexity" in a.choices)
    text = " ".join(sub.choices["complexity"].format_help().split())
    assert "default " + " ".join(str(d) for d in DEFAULT_DEPTHS) in text

"""Property 7 of the reversible core: DistributedDataParallel sees ordinary gradients.

A memory-saving :class:`~revunet.reversible.ReversibleSequence` is a single autograd
node with every trainable parameter as an explicit input, so DDP's per-parameter
gradient hooks fire as for ordinary layers, also when the sequence is the first
layer and its input (the raw image) does not require grad. Two CPU processes
(gloo) each train on half of a fixed batch of 4; the all-reduced gradients must
equal those of one process computing the mean loss over the whole batch.

Workers write their results with ``torch.save`` into ``tmp_path``; an exception in
a worker makes :func:`torch.multiprocessing.spawn` raise in the test, carrying the
worker's traceback.

Also the start of a torchrun run: each rank fingerprints its share of the inputs before the
process group forms (rank 0 stores the merged fingerprint), and the group's timeout.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from revunet.experiments.recipe import Experiment
from revunet.models.blocks import residual_coupling_sequence
from revunet.training import distributed
from revunet.training.distributed import TIMEOUT_VARIABLE, Processes, process_group, process_group_timeout
from revunet.training.errors import TrainError
from revunet.training.loop import train as train_run
from revunet.training.randomness import cuda_states_to_restore, restore_rng_state, rng_state
from revunet.training.resumption import changed_inputs, input_fingerprint
from revunet.training.state import load_checkpoint, stored_inputs
from test_train import make_data, store_case, tiny

WORLD_SIZE = 2
BATCH = 4
STEPS = 2  # the second step checks that DDP's reducer is ready again after the first
LR = 0.05
RTOL, ATOL = 1e-5, 1e-6


def build_model(kind: str, memory_saving: bool = True) -> nn.Module:
    if kind == "stem":
        # raw input does not require grad; the stem's output does (through its parameters)
        return nn.Sequential(
            nn.Conv3d(2, 8, 3, padding=1),
            residual_coupling_sequence(8, 3, 2, memory_saving=memory_saving),
            nn.Conv3d(8, 1, 1),
        )
    if kind == "first":
        # the reversible sequence is the very first layer: its input is the raw image
        return nn.Sequential(
            residual_coupling_sequence(8, 3, 2, memory_saving=memory_saving),
            nn.Conv3d(8, 1, 1),
        )
    raise ValueError(kind)


def in_channels(kind: str) -> int:
    return {"stem": 2, "first": 8}[kind]


def loss_of(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(output, target)  # mean over the (local) batch


def train(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> dict[str, list]:
    """STEPS SGD steps; records the loss and every parameter's gradient at each step."""
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR)
    record: dict[str, list] = {"loss": [], "grads": []}
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = loss_of(model(x), target)
        loss.backward()
        record["loss"].append(loss.detach().clone())
        record["grads"].append(
            {name: None if p.grad is None else p.grad.detach().clone() for name, p in params.items()}
        )
        opt.step()
    return record


def _ddp_worker(rank: int, world_size: int, port: int, case_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=60))
    try:
        case = torch.load(case_file)
        model = build_model(case["kind"])
        model.load_state_dict(case["state"])
        ddp = DistributedDataParallel(model)
        x = case["x"].chunk(world_size)[rank]
        target = case["target"].chunk(world_size)[rank]
        assert x.shape[0] == BATCH // world_size and not x.requires_grad
        record = train(ddp, x, target)
        # names through the DDP wrapper carry a "module." prefix
        record["grads"] = [{k.removeprefix("module."): v for k, v in g.items()} for g in record["grads"]]
        record["state"] = {k: v.clone() for k, v in model.state_dict().items()}
        torch.save(record, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _failing_worker(rank: int, marker: str) -> None:
    if rank == 1:
        raise AssertionError(f"worker failure {marker}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(kind: str, tmp_path: Path) -> tuple[dict, list[dict]]:
    torch.manual_seed(1234)
    model = build_model(kind)
    x = torch.randn(BATCH, in_channels(kind), 6, 6, 6)
    target = torch.randn(BATCH, 1, 6, 6, 6)
    case_file = tmp_path / "case.pt"
    torch.save({"kind": kind, "state": model.state_dict(), "x": x, "target": target}, case_file)

    mp.spawn(
        _ddp_worker,
        args=(WORLD_SIZE, free_port(), str(case_file), str(tmp_path)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD_SIZE)]

    reference_model = build_model(kind)
    reference_model.load_state_dict(model.state_dict())
    reference = train(reference_model, x, target)
    reference["state"] = reference_model.state_dict()

    twin = build_model(kind, memory_saving=False)
    twin.load_state_dict(model.state_dict())
    reference["twin"] = train(twin, x, target)
    return reference, ranks


@pytest.mark.parametrize("kind", ["stem", "first"])
def test_ddp_gradients_equal_single_process_full_batch(kind: str, tmp_path: Path) -> None:
    reference, ranks = run_ddp(kind, tmp_path)
    names = list(reference["grads"][0])
    assert any(".blocks." in n for n in names)  # the reversible sequence's parameters are there

    for step in range(STEPS):
        ref_grads = reference["grads"][step]
        # the memory-saving reference is itself right: it matches the plain-autograd twin
        for name in names:
            torch.testing.assert_close(ref_grads[name], reference["twin"]["grads"][step][name], rtol=1e-4, atol=1e-6)
        # the mean of the two half-batch losses is the full-batch loss
        mean_loss = sum(r["loss"][step] for r in ranks) / WORLD_SIZE
        torch.testing.assert_close(mean_loss, reference["loss"][step], rtol=RTOL, atol=ATOL)
        for rank, result in enumerate(ranks):
            grads = result["grads"][step]
            assert set(grads) == set(names)
            for name in names:
                assert grads[name] is not None, f"rank {rank} step {step}: no gradient for {name}"
                assert ref_grads[name].abs().sum() > 0, name
                torch.testing.assert_close(
                    grads[name],
                    ref_grads[name],
                    rtol=RTOL,
                    atol=ATOL,
                    msg=lambda m, n=name, r=rank, s=step: f"rank {r} step {s} {n}: {m}",
                )
        # both ranks hold the same all-reduced gradient
        for name in names:
            assert torch.equal(ranks[0]["grads"][step][name], ranks[1]["grads"][step][name]), name

    # after the steps the replicas are still identical and match the single process
    for key, value in reference["state"].items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key]), key
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=RTOL, atol=ATOL)


def test_worker_failure_fails_the_caller_with_its_traceback() -> None:
    """The mechanism the tests above rely on: an exception in a worker is not swallowed."""
    with pytest.raises(mp.ProcessRaisedException) as info:
        mp.spawn(_failing_worker, args=("xyzzy",), nprocs=WORLD_SIZE, join=True)
    message = str(info.value)
    assert "worker failure xyzzy" in message
    assert "Traceback" in message and "_failing_worker" in message


# --------------------------------------------------------------------------- starting a torchrun run


def _run_worker(rank: int, port: int, experiment: dict, pre: str, split: str, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(WORLD_SIZE=str(WORLD_SIZE), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1")
    os.environ.update(MASTER_PORT=str(port), REVUNET_PROCESS_GROUP_TIMEOUT="120")
    train_run(Experiment.from_dict(experiment), pre, split, out, device="cpu", progress=False)


def _refuse_to_read(*args, **kwargs):
    raise AssertionError("a file whose size and time are unchanged was read again")


@pytest.mark.slow
def test_two_ranks_store_the_single_process_fingerprint_and_resume_by_it(tmp_path, capsys, monkeypatch) -> None:
    """Each rank hashes its share of the cases before the group forms (no rank waits in a
    collective while another reads tens of GB); the merged fingerprint rank 0 stores is the one
    a single process takes, so whether a later run resumes is decided as before."""
    pre, split = make_data(tmp_path, n_train=3, n_held=1)
    shares = [input_fingerprint(pre, split, share=(rank, WORLD_SIZE)) for rank in range(WORLD_SIZE)]
    assert [list(share["cases"]) for share in shares] == [["case0", "case2"], ["case1", "case3"]]
    out, experiment = tmp_path / "run", tiny(epochs=1)
    mp.spawn(
        _run_worker,
        args=(free_port(), experiment.to_dict(), str(pre), str(split), str(out)),
        nprocs=WORLD_SIZE,
        join=True,
    )
    stored = load_checkpoint(out / "last.pt")["inputs"]
    single = input_fingerprint(pre, split)
    assert stored == single and list(stored["cases"]) == list(single["cases"])  # the same, in the same order
    assert stored_inputs(out / "last.pt") == stored  # read back without the weights
    # one process resumes the finished run from it: nothing to do, and no file hashed again
    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(hashlib, "file_digest", _refuse_to_read)
        train_run(experiment, pre, split, out, device="cpu", progress=False)
    assert "nothing to do" in capsys.readouterr().out
    # a case of rank 1's share re-preprocessed: the stored fingerprint names it
    store_case(pre, "case1", seed=99)
    assert changed_inputs(stored, input_fingerprint(pre, split)) == ["changed cases: case1"]


def test_process_group_timeout_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv(TIMEOUT_VARIABLE, raising=False)
    assert process_group_timeout() == datetime.timedelta(seconds=1800)
    monkeypatch.setenv(TIMEOUT_VARIABLE, " 90.5 ")
    assert process_group_timeout() == datetime.timedelta(seconds=90.5)
    for bad in ("ten", "0", "-5", "nan", "inf"):
        monkeypatch.setenv(TIMEOUT_VARIABLE, bad)
        expected = f"REVUNET_PROCESS_GROUP_TIMEOUT must be a positive number of seconds, got '{bad}'"
        with pytest.raises(TrainError, match=expected):
            process_group_timeout()


def test_the_process_group_is_formed_with_that_timeout(monkeypatch) -> None:
    """What process_group hands to init_process_group (recorded: no group is formed)."""
    calls: list = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(TIMEOUT_VARIABLE, "42")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda *args, **kwargs: calls.append((args, kwargs)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroyed"))
    assert Processes.launched() == Processes(1, 2, 1)  # known before the group forms
    with process_group("cpu") as (processes, device):
        assert processes == Processes(1, 2, 1) and device == torch.device("cpu")
    assert calls == [(("gloo",), {"timeout": datetime.timedelta(seconds=42)}), "destroyed"]
    monkeypatch.setenv(TIMEOUT_VARIABLE, "soon")
    with pytest.raises(TrainError, match="got 'soon'"), process_group("cpu"):
        pass
    assert len(calls) == 2  # a bad value stops before joining


def test_resuming_on_fewer_gpus_restores_the_random_states_of_those_there_are(monkeypatch, capsys) -> None:
    """A checkpoint of a four-GPU run resumed where two are visible (CUDA mocked: no GPU needed)."""
    saved = [torch.full((8,), gpu, dtype=torch.uint8) for gpu in range(4)]
    kept, note = cuda_states_to_restore(saved, 2)
    assert [int(state[0]) for state in kept] == [0, 1] and "4 GPU(s) but 2 are visible" in str(note)
    assert cuda_states_to_restore(saved, 4) == (saved, None)
    assert [int(state[0]) for state in cuda_states_to_restore(saved, 6)[0]] == [0, 1, 2, 3]
    restored: list[tuple[int, int]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    restore_rng_state({**rng_state(), "cuda": saved})
    assert restored == [(0, 0), (1, 1)]
    assert capsys.readouterr().out == (
        "note: last.pt holds the CUDA random states of 4 GPU(s) but 2 are visible: restoring 2, dropping 2\n"
    )
    # more GPUs than saved: each saved state goes back to its GPU, the others stay as seeded, no note
    restored.clear()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 6)
    restore_rng_state({**rng_state(), "cuda": saved})
    assert restored == [(0, 0), (1, 1), (2, 2), (3, 3)] and capsys.readouterr().out == ""

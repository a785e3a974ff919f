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
"""

from __future__ import annotations

import datetime
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

from revunet.models.blocks import residual_coupling_sequence

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

"""``compile: true``: blocks compiled by inductor, the reversible core eager, gradients and memory saving kept."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from revunet.experiments.recipe import Experiment
from revunet.models.compiled import compile_blocks, compiled_blocks
from revunet.models.registry import build_model
from revunet.models.vae import SegmentationWithVAE
from revunet.reversible import InvertibleModule, ReversibleSequence
from revunet.training.setup import _seeded_model

SMALL = {"in_channels": 2, "out_channels": 3, "channels": [8, 16]}
SIZE = 16


class RecordingInductor:
    """The inductor backend, noting the grad mode of every graph it compiles."""

    def __init__(self) -> None:
        self.grad_modes: list[bool] = []

    def __call__(self, graph: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> object:
        from torch._inductor.compile_fx import compile_fx

        self.grad_modes.append(torch.is_grad_enabled())
        return compile_fx(graph, inputs)


def _model(name: str, **params: object) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, **SMALL, **params)


def _loss(output: torch.Tensor | SegmentationWithVAE) -> torch.Tensor:
    if isinstance(output, SegmentationWithVAE):
        assert output.reconstruction is not None and output.mu is not None and output.logvar is not None
        parts = (output.logits, output.reconstruction, output.mu, output.logvar)
        return sum((part.square().mean() for part in parts), torch.zeros(()))
    return output.square().mean()


def _step(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and every parameter's gradient of one training step, the random draws seeded alike."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    loss = _loss(model(x))
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        grads[name] = p.grad.clone()
    return loss.detach(), grads


def _assert_same_step(model: nn.Module, x: torch.Tensor) -> None:
    """The compiled copy of ``model`` gives the eager loss and gradients (rtol 1e-4 of max |grad|)."""
    compiled = copy.deepcopy(model)
    backend = RecordingInductor()
    paths = compile_blocks(compiled, backend=backend)
    assert paths and compiled_blocks(compiled) == paths
    eager_loss, eager_grads = _step(model, x)
    compiled_loss, compiled_grads = _step(compiled, x)
    # F and G ran compiled in both grad modes: no_grad in the forward, with grad in the recomputation
    assert False in backend.grad_modes and True in backend.grad_modes, backend.grad_modes
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-5, atol=0)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        scale = grad.abs().max().item()
        error = (compiled_grads[name] - grad).abs().max().item()
        assert error <= 1e-4 * scale + 1e-12, f"{name}: max error {error:.3g} against max |grad| {scale:.3g}"


@pytest.mark.slow(125)
def test_compiled_partially_reversible_with_dropout_gives_the_eager_gradients() -> None:
    # dropout masks drawn in the forward must be replayed in the compiled recomputation
    model = _model("partially_reversible", groups=4, dropout=0.2, memory_saving=True).train()
    _assert_same_step(model, torch.randn(2, 2, SIZE, SIZE, SIZE))


@pytest.mark.slow(45)
def test_compiled_invertible_unet_with_vae_gives_the_eager_gradients() -> None:
    model = _model("invres_full", groups=4, vae_input_size=[SIZE] * 3, latent_dim=8, memory_saving=True).train()
    assert isinstance(model.vae, nn.Module)
    _assert_same_step(model, torch.randn(2, 2, SIZE, SIZE, SIZE))


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd keeps for backward during one forward.

    The backward runs outside the hooks: its recomputation saves (one block at a time, freed as
    it goes) are not what the memory saving is about."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = _loss(model(x))
    loss.backward()
    return sum(storages.values())


@pytest.mark.slow(65)
def test_compiled_reversible_model_still_saves_no_activations() -> None:
    x = torch.randn(1, 2, 32, 32, 32)
    saving = _model("partially_reversible", groups=4, memory_saving=True)
    twin = _model("partially_reversible", groups=4, memory_saving=False)
    compiled = copy.deepcopy(saving)
    compile_blocks(compiled)
    _step(compiled, x)  # compile outside the measurement
    eager_bytes, compiled_bytes, twin_bytes = (_saved_bytes(m, x) for m in (saving, compiled, twin))
    assert compiled_bytes <= eager_bytes * 1.1 + 64 * 1024, (compiled_bytes, eager_bytes)
    assert compiled_bytes < 0.5 * twin_bytes, (compiled_bytes, twin_bytes)


def test_compiled_blocks_leave_the_reversible_core_eager_and_the_state_dict_unchanged() -> None:
    model = _model("invres_partial", vae_input_size=[SIZE] * 3, latent_dim=8)
    keys = list(model.state_dict())
    paths = compile_blocks(model, backend="eager")
    assert any(path.endswith(".f") for path in paths)
    assert not any(path.startswith("vae") for path in paths), paths  # eager: see models/compiled.py
    for path in paths:
        block = model.get_submodule(path)
        assert not any(isinstance(m, (ReversibleSequence, InvertibleModule)) for m in block.modules()), path
    assert list(model.state_dict()) == keys
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    eager = _model("invres_partial", vae_input_size=[SIZE] * 3, latent_dim=8)
    eager.load_state_dict(torch.load(buffer), strict=True)
    assert compiled_blocks(copy.deepcopy(model)) == []  # a copy is an eager model


def test_a_model_without_reversible_parts_is_compiled_whole() -> None:
    assert compile_blocks(_model("nonewnet", groups=4), backend="eager") == [""]


def test_training_compiles_only_when_the_experiment_says_so() -> None:
    base = {"name": "tiny", "task": "brats", "model": "partially_reversible", "model_params": {**SMALL, "groups": 4}}
    assert compiled_blocks(_seeded_model(Experiment.from_dict(base), torch.device("cpu"))) == []
    model = _seeded_model(Experiment.from_dict({**base, "compile": True}), torch.device("cpu"))
    assert "stem" in compiled_blocks(model)


def test_experiment_compile_must_be_a_boolean() -> None:
    base = {"name": "tiny", "task": "brats", "model": "unet3d"}
    assert Experiment.from_dict({**base, "compile": True}).compile is True
    assert Experiment.from_dict(base).compile is False
    with pytest.raises(ValueError, match="key 'compile' must be true or false"):
        Experiment.from_dict({**base, "compile": "yes"})

"""CUDA's autocast policy for a measurement on the CPU (fake tensors cannot run CUDA's autocast).

Autocast decides per operation which dtype runs, and the CPU and CUDA lists differ. A fake
measurement runs CPU autocast, so its dtypes, and the bytes saved for backward, follow the
CPU's lists. Where the two lists disagree on an operation a segmentation network uses, this mode
applies CUDA's choice on top of CPU autocast (torch 2.13; the lists of the automatic mixed
precision documentation, checked on the CPU side by probing each operation):

* CUDA runs pooling in the input's dtype, where the CPU runs it in float32 (and saves a float32
  copy of a half-precision input): average and max pooling run with autocast off here;
* CUDA runs normalisations other than batch/instance norm, softmax, sums, exponentials,
  logarithms and powers in float32, where the CPU runs them in the input's dtype: their
  half-precision inputs are cast to float32 here, as CUDA autocast casts them (the copies are
  recorded by autograd like autocast's own).

Operations on both lists alike (convolutions, linear layers, losses) are left to CPU autocast.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

# On CUDA in the input's dtype, on the CPU in float32.
_INPUT_DTYPE_ON_CUDA = frozenset({"avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool3d", "adaptive_max_pool3d"})
# On CUDA in float32, on the CPU in the input's dtype.
_FLOAT32_ON_CUDA = frozenset(
    {
        "group_norm",
        "layer_norm",
        "softmax",
        "log_softmax",
        "softmin",
        "sum",
        "prod",
        "cumsum",
        "cumprod",
        "exp",
        "expm1",
        "log",
        "log1p",
        "log2",
        "log10",
        "pow",
        "__pow__",
        "__rpow__",
        "reciprocal",
        "rsqrt",
        "softplus",
        "norm",
        "normalize",
    }
)
_HALF = (torch.float16, torch.bfloat16)
POLICIES = ("cpu", "cuda")


def _to_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.dtype in _HALF:
        return value.float()
    return value


class CudaAutocastPolicy(TorchFunctionMode):
    """While CPU autocast is on, operations whose CUDA autocast dtype differs get CUDA's dtype."""

    def __torch_function__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if not torch.is_autocast_enabled("cpu"):
            return func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name in _INPUT_DTYPE_ON_CUDA:
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        if name in _FLOAT32_ON_CUDA:
            args, kwargs = tree_map(_to_float32, (args, kwargs))
            with torch.autocast("cpu", enabled=False):
                return func(*args, **kwargs)
        return func(*args, **kwargs)

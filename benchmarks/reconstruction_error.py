"""How exactly does a deep coupling sequence reconstruct its input, in float32 and float64?

The memory-saving backward never stores activations: it recomputes every
block's input from its output, ``x = inverse(y)``. Floating-point rounding makes
that reconstruction inexact, and the error can grow with depth and with the
size of the activations (``y1 = x1 + F(x2)`` loses the low bits of ``x1`` when
``F(x2)`` is large). This benchmark measures ``inverse(forward(x)) - x`` for
``residual_coupling_sequence(16, L, 4)`` with the default initialisation and
with every convolution weight multiplied by a factor (default 3) to provoke
large activations; float64 is the reference showing the error is rounding.

Run ``python benchmarks/reconstruction_error.py --help`` for the options.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from revunet.models.blocks import residual_coupling_sequence
from revunet.reversible import ReversibleSequence


def scale_conv_weights(sequence: nn.Module, factor: float) -> None:
    """Multiply every Conv3d weight by ``factor`` in place (larger F/G outputs, larger activations)."""
    with torch.no_grad():
        for module in sequence.modules():
            if isinstance(module, nn.Conv3d):
                module.weight.mul_(factor)


@torch.no_grad()
def reconstruction_error(sequence: ReversibleSequence, x: torch.Tensor) -> dict[str, float]:
    """Max abs and relative error of ``inverse(forward(x))``, plus the output's size.

    Relative error is the max abs error divided by ``max|x|``; ``max|y|`` shows how
    large the activations the inverse subtracts from have become.
    """
    y = sequence(x)
    error = (sequence.inverse(y) - x).abs().max().item()
    return {"max_abs_y": y.abs().max().item(), "max_abs_err": error, "rel_err": error / x.abs().max().item()}


def measure(
    depths: Iterable[int], channels: int, groups: int, size: int, batch: int, factor: float, seed: int
) -> pd.DataFrame:
    """One row per (initialisation, depth): float32 and float64 errors on identical weights and input."""
    rows = []
    for init, scale in (("default", 1.0), (f"conv x{factor:g}", factor)):
        for depth in depths:
            torch.manual_seed(seed)
            sequence = residual_coupling_sequence(channels, depth, groups).eval()
            if scale != 1.0:
                scale_conv_weights(sequence, scale)
            x = torch.randn(batch, channels, size, size, size)
            single = reconstruction_error(sequence, x)
            double = reconstruction_error(copy.deepcopy(sequence).double(), x.double())
            rows.append(
                {
                    "init": init,
                    "depth": depth,
                    "f32 max abs y": single["max_abs_y"],
                    "f32 max abs err": single["max_abs_err"],
                    "f32 rel err": single["rel_err"],
                    "f64 max abs err": double["max_abs_err"],
                    "f64 rel err": double["rel_err"],
                }
            )
    return pd.DataFrame(rows)


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--size", type=int, default=16, help="spatial size S of the (batch, C, S, S, S) input")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--scale", type=float, default=3.0, help="conv weight factor of the second initialisation")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--markdown", action="store_true", help="print a markdown table (needs tabulate)")
    parser.add_argument("--out", type=Path, help="also write the table to this CSV file")
    return parser.parse_args(argv)


def main(argv: Iterable[str] | None = None) -> None:
    args = parse_args(argv)
    table = measure(args.depths, args.channels, args.groups, args.size, args.batch, args.scale, args.seed)
    print(
        f"residual_coupling_sequence({args.channels}, L, {args.groups}), x ~ N(0, 1) of shape "
        f"({args.batch}, {args.channels}, {args.size}, {args.size}, {args.size}), torch {torch.__version__}"
    )
    if args.markdown:
        print(table.to_markdown(index=False, floatfmt=".3g"))
    else:
        print(table.to_string(index=False, float_format="{:.3g}".format))
    if args.out:
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

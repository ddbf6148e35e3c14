"""Fused oneDNN calls for the CPU encoders: a linear layer with its GELU or residual addition in one call.

On the CPU in float32, ``torch.ops.mkldnn._linear_pointwise`` runs the product and the GELU (or
the addition) while the output is still in cache, and oneDNN's product beats the default one on
the encoders' shapes (docs/speed.md). These are PyTorch's private ops (the ones its compiler
emits), so :func:`fused_ok` checks them once per process against the plain ops on random data;
where they fail or disagree, a warning says so and :func:`linear` runs the plain ops.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

logger = logging.getLogger(__name__)

_CHECKED: list[bool] = []


def fused_ok(x: Tensor) -> bool:
    """Whether the fused calls run for ``x``: float32 on a CPU whose oneDNN passed the check, not
    while being exported (ONNX)."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.compiler.is_exporting()
        and fused_ops_work()
    )


def fused_ops_work() -> bool:
    """Checked once per process: the fused calls give what the plain ops give on random data."""
    if not _CHECKED:
        _CHECKED.append(_check())
    return _CHECKED[0]


def linear(layer: nn.Linear, x: Tensor, gelu: bool = False, add: Tensor | None = None) -> Tensor:
    """``layer(x)``, then exact GELU (``gelu``) or ``+ add``: one oneDNN call where :func:`fused_ok`."""
    if fused_ok(x):
        pointwise = torch.ops.mkldnn._linear_pointwise
        if add is not None:
            return pointwise.binary(x, add, layer.weight, layer.bias, "add")
        return pointwise(x, layer.weight, layer.bias, "gelu" if gelu else "none", [], "none" if gelu else "")
    y = F.linear(x, layer.weight, layer.bias)
    if gelu:
        y = F.gelu(y)
    return y if add is None else y + add


def _check() -> bool:
    generator = torch.Generator().manual_seed(0)
    x, add = torch.randn(2, 5, 6, 8, generator=generator), torch.randn(2, 5, 6, 16, generator=generator)
    weight, bias = torch.randn(16, 8, generator=generator), torch.randn(16, generator=generator)
    conv_w, conv_b = torch.randn(8, 1, 3, 3, generator=generator), torch.randn(8, generator=generator)
    maps = x.permute(0, 3, 1, 2)  # channels-last memory, as the encoders' depthwise convolutions
    try:
        ops = torch.ops.mkldnn
        with torch.inference_mode():
            fused = [
                ops._linear_pointwise(x, weight, bias, "gelu", [], "none"),
                ops._linear_pointwise(x, weight, None, "none", [], ""),
                ops._linear_pointwise.binary(x, add, weight, bias, "add"),
                ops._convolution_pointwise(
                    maps, conv_w, conv_b, [1, 1], [2, 2], [1, 1], 8, "gelu", [], "none"
                ),
            ]
            plain = [
                F.gelu(F.linear(x, weight, bias)),
                F.linear(x, weight),
                F.linear(x, weight, bias) + add,
                F.gelu(F.conv2d(maps, conv_w, conv_b, stride=2, padding=1, groups=8)),
            ]
        agree = all(
            a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
            for a, b in zip(fused, plain, strict=True)
        )
    except (AttributeError, RuntimeError) as err:
        logger.warning("fused oneDNN calls unavailable (%s); the encoders run the plain ops", err)
        return False
    if not agree:
        logger.warning("fused oneDNN calls disagree with the plain ops; the encoders run the plain ops")
    return agree

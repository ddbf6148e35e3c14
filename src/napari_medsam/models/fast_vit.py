"""SAM's ViT image encoder (MedSAM / SAM ViT-B, -L, -H) with less memory traffic.

:class:`SamImageEncoder` runs the weights of a transformers ``SamVisionEncoder`` (shared,
not copied) through the same mathematics as transformers, but:

- the decomposed relative-position bias of the global-attention blocks is written once, in
  contiguous chunks of query rows, straight into the fused attention kernel's mask; transformers
  materialises the full (heads, 4096, 4096) bias and then copies it through a strided reshape
  (a quarter of its float32 encoder time on a 2-core CPU, and ~1.6 GB of peak memory);
- the residual stream is kept contiguous channels-last (transformers keeps the patch
  convolution's channels-first memory, so every LayerNorm and projection first copies it);
- windowed blocks pad and partition the 768-wide normed map in one copy (not the 2304-wide qkv),
  q, k and v go to the attention kernel as strided views, and the output projection runs once
  the windows are merged and cropped; the MLP runs in chunks of tokens whose hidden layer stays
  in cache;
- in float32 on the CPU the products run through oneDNN (``models/onednn``), the global
  attention's too: per head, in chunks of query rows whose scores stay in cache, the
  decomposed bias added to the scores in place;
- when the model is held in bfloat16/float16, the residual stream, the LayerNorms, the
  relative-position terms and (on the CPU) the attention bias stay in float32; only the matrix
  products run in reduced precision (the full-bf16 model is borderline on mask agreement).

Outputs equal ``SamModel.get_image_embeddings`` up to float rounding (``tests/test_fast_paths.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_medsam.base.preemption import preemption_point
from napari_medsam.models.onednn import fused_ok, linear

if TYPE_CHECKING:
    from transformers import SamModel

__all__ = ["SamImageEncoder", "encode_image"]

#: Query rows of the global-attention grid per chunk: 8 rows x 64 = 512 queries, whose bias for
#: 12 heads against 4096 keys is 100 MB in float32, instead of 805 MB for all rows at once.
GLOBAL_ROWS_PER_CHUNK = 8
#: Query rows of the global-attention grid per chunk on oneDNN's path: 4 rows x 64 = 256 queries,
#: whose scores for one head against 4096 keys are 4 MB in float32 (cache-resident).
ONEDNN_ROWS_PER_CHUNK = 4
#: Tokens per MLP chunk on the CPU: 512 x 3072 float32 hidden = 6 MB, cache-resident.
MLP_TOKENS_PER_CHUNK = 512


class SamImageEncoder(nn.Module):
    """``pixel_values`` (B, 3, S, S) -> image embeddings through a ``SamModel``'s ViT encoder.

    Runs :func:`napari_medsam.models.fast_vit.encode_image`: ``get_image_embeddings``'s
    mathematics with less memory traffic (and mixed precision for bfloat16/float16 models).
    """

    def __init__(self, sam: SamModel) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values: Tensor) -> Tensor:
        return encode_image(self.sam, pixel_values)


def encode_image(sam: SamModel, pixel_values: Tensor) -> Tensor:
    """What ``sam.get_image_embeddings(pixel_values)`` computes, in the model's dtype."""
    vision = sam.vision_encoder
    projection = vision.patch_embed.projection
    dtype = projection.weight.dtype
    with torch.inference_mode():
        patches = projection(pixel_values.to(projection.weight.device, dtype)).permute(0, 2, 3, 1)
        # the residual stream: float32, contiguous channels-last (B, H, W, C); a plain
        # permute would keep the convolution's channels-first memory and make every
        # later LayerNorm and projection copy it first
        x = torch.empty(patches.shape, dtype=torch.float32, device=patches.device)
        x.copy_(patches)
        if vision.pos_embed is not None:
            x += vision.pos_embed.float()
        for layer in vision.layers:
            preemption_point()
            x = _layer_forward(layer, x, dtype)
        return _neck(vision.neck, x, dtype)


def _norm(norm: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm in float32 whatever the weights' dtype."""
    return F.layer_norm(x, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)


def _linear(layer: nn.Linear, x: Tensor) -> Tensor:
    return linear(layer, x.to(layer.weight.dtype))  # float32 on the CPU: oneDNN's product


def _layer_forward(layer: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """One ``SamVisionLayer`` on the contiguous (B, H, W, C) float32 residual stream (updated in place)."""
    h = _norm(layer.layer_norm1, x).to(dtype)
    if layer.window_size > 0:
        _window_attention(layer.attn, h, layer.window_size, x)
    else:
        _global_attention(layer.attn, h, x)
    _mlp(layer, x.view(-1, x.shape[-1]), dtype)
    return x


def _mlp(layer: nn.Module, x: Tensor, dtype: torch.dtype) -> None:
    """``x += mlp(layer_norm2(x))`` on (N, C) tokens, in chunks whose hidden layer stays in cache."""
    mlp = layer.mlp
    step = MLP_TOKENS_PER_CHUNK if x.device.type == "cpu" else x.shape[0]
    for start in range(0, x.shape[0], step):
        rows = x[start : start + step]
        h = _norm(layer.layer_norm2, rows).to(dtype)
        rows += _linear(mlp.lin2, mlp.act(_linear(mlp.lin1, h))).float()


def _rel_terms(attn: nn.Module, q: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Decomposed relative-position terms of q (B, heads, H*W, d), in float32.

    Returns (B, heads, H, W, H) and (B, heads, H, W, W): the bias of query (y, x) for key
    (ky, kx) is ``rel_h[..., y, x, ky] + rel_w[..., y, x, kx]``.
    """
    b, heads, _, dim = q.shape
    table_h = attn.get_rel_pos(grid[0], grid[0], attn.rel_pos_h.float())  # (H, H, d)
    table_w = attn.get_rel_pos(grid[1], grid[1], attn.rel_pos_w.float())  # (W, W, d)
    qg = q.float().reshape(b, heads, grid[0], grid[1], dim)
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", qg, table_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", qg, table_w)
    return rel_h, rel_w


def _mask_dtype(q: Tensor) -> torch.dtype:
    # CPU attention takes a float32 bias with bfloat16/float16 queries; CUDA wants q's dtype.
    return torch.float32 if q.device.type == "cpu" else q.dtype


def _global_attention(attn: nn.Module, h: Tensor, x: Tensor) -> None:
    """``x += proj(attention(h))`` over the whole (B, H, W, C) map, in chunks of query rows."""
    b, height, width, channels = h.shape
    heads = attn.num_attention_heads
    n = height * width
    qkv = _linear(attn.qkv, h).view(b, n, 3, heads, channels // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, N, d) views, no copies
    rel_h, rel_w = _rel_terms(attn, q, (height, width))
    tokens = x.view(b, n, channels)
    if fused_ok(q):
        out = _global_attention_onednn(q, k, v, rel_h, rel_w, attn.scale)
        tokens += _linear(attn.proj, out.view(b, n, channels))
        return
    rows = max(1, min(GLOBAL_ROWS_PER_CHUNK, height))
    bias = torch.empty(b, heads, rows, width, height, width, dtype=_mask_dtype(q), device=q.device)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        chunk = bias[:, :, : r1 - r0]
        torch.add(rel_h[:, :, r0:r1, :, :, None], rel_w[:, :, r0:r1, :, None, :], out=chunk)
        span = slice(r0 * width, r1 * width)
        mask = chunk.view(b, heads, (r1 - r0) * width, n)
        out = F.scaled_dot_product_attention(q[:, :, span], k, v, attn_mask=mask, scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, -1, channels)
        tokens[:, span] += _linear(attn.proj, out).float()


def _global_attention_onednn(
    q: Tensor, k: Tensor, v: Tensor, rel_h: Tensor, rel_w: Tensor, scale: float
) -> Tensor:
    """softmax(scale q k^T + bias) v per head, in chunks of :data:`ONEDNN_ROWS_PER_CHUNK` query
    rows, both products through oneDNN (float32 on the CPU; 2x faster than the fused attention
    kernel with a dense bias on a 2-core AMD EPYC, docs/speed.md); the bias is added to the scores
    in place, never materialised. Returns (B, N, heads, d)."""
    b, heads, n, dim = q.shape
    height, width = rel_h.shape[2], rel_h.shape[3]
    rows = max(1, min(ONEDNN_ROWS_PER_CHUNK, height))
    product = torch.ops.mkldnn._linear_pointwise
    out = q.new_empty(b, n, heads, dim)
    for i in range(b):
        for head in range(heads):
            preemption_point()
            keys = k[i, head].contiguous()  # (N, d): scores = queries @ keys^T
            values_t = v[i, head].t().contiguous()  # (d, N): out = probabilities @ values_t^T
            queries = (q[i, head] * scale).contiguous()
            for r0 in range(0, height, rows):
                r1 = min(height, r0 + rows)
                span = slice(r0 * width, r1 * width)
                scores = product(queries[span], keys, None, "none", [], "")  # (rows * W, N)
                grid = scores.view(r1 - r0, width, height, width)
                grid += rel_h[i, head, r0:r1, :, :, None]
                grid += rel_w[i, head, r0:r1, :, None, :]
                torch.softmax(scores, dim=-1, out=scores)
                out[i, span, head] = product(scores, values_t, None, "none", [], "")
    return out


def _window_attention(attn: nn.Module, h: Tensor, window: int, x: Tensor) -> None:
    """``x += proj(attention(h))`` within zero-padded windows of the (B, H, W, C) map."""
    b, height, width, channels = h.shape
    heads = attn.num_attention_heads
    dim = channels // heads
    pad_h, pad_w = (-height) % window, (-width) % window
    hp, wp = height + pad_h, width + pad_w
    nh, nw = hp // window, wp // window
    n = window * window
    # pad and partition the (narrow) normed map in one copy, then project the windows
    windows = h.new_zeros(b, nh, nw, window, window, channels)
    _copy_into_windows(h, windows)
    qkv = _linear(attn.qkv, windows.view(-1, channels)).view(b * nh * nw, n, 3, heads, dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B * windows, heads, N, d) views
    rel_h, rel_w = _rel_terms(attn, q, (window, window))
    mask = torch.empty(*rel_h.shape, window, dtype=torch.float32, device=q.device)
    torch.add(rel_h[..., None], rel_w[..., None, :], out=mask)  # contiguous, one pass
    mask = mask.view(-1, heads, n, n).to(_mask_dtype(q))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attn.scale)
    # (B * windows, heads, N, d) -> (B, nh, ws, nw, ws, C) -> crop -> (B, H, W, C)
    out = out.transpose(1, 2).reshape(b, nh, nw, window, window, channels)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, channels)[:, :height, :width]
    x += _linear(attn.proj, out.contiguous()).float()


def _copy_into_windows(h: Tensor, windows: Tensor) -> None:
    """Copy the (B, H, W, C) map into zeroed (B, nh, nw, ws, ws, C) windows; padding stays 0."""
    b, height, width, channels = h.shape
    window = windows.shape[3]
    full_h, full_w = height // window, width // window
    top, left = full_h * window, full_w * window
    rem_h, rem_w = height - top, width - left
    # whole windows: (B, nh, ws, nw, ws, C) views on both sides
    windows[:, :full_h, :full_w].copy_(
        h[:, :top, :left].reshape(b, full_h, window, full_w, window, channels).transpose(2, 3)
    )
    if rem_w:  # the right column of partial windows
        windows[:, :full_h, full_w, :, :rem_w].copy_(
            h[:, :top, left:].reshape(b, full_h, window, rem_w, channels)
        )
    if rem_h:  # the bottom row of partial windows
        windows[:, full_h, :full_w, :rem_h].copy_(
            h[:, top:, :left].reshape(b, rem_h, full_w, window, channels).transpose(1, 2)
        )
    if rem_h and rem_w:
        windows[:, full_h, full_w, :rem_h, :rem_w].copy_(h[:, top:, left:])


def _neck(neck: nn.Module, x: Tensor, dtype: torch.dtype) -> Tensor:
    """conv 1x1, LayerNorm, conv 3x3, LayerNorm on the channels-last map; returns (B, C, H, W)."""
    weight = neck.conv1.weight
    y = F.linear(x.to(dtype), weight.flatten(1), neck.conv1.bias)
    y = _norm(neck.layer_norm1, y.float()).to(dtype)
    y = neck.conv2(y.permute(0, 3, 1, 2))
    y = _norm(neck.layer_norm2, y.permute(0, 2, 3, 1).float())
    return y.permute(0, 3, 1, 2).to(dtype).contiguous()

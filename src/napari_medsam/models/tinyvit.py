"""LiteMedSAM's TinyViT image encoder, written for fast inference.

Input ``pixel_values`` (B, 3, 256, 256) -> image embedding (B, 256, 64, 64).

The architecture is the one LiteMedSAM's checkpoint implies (see ``TinyViT.from_state_dict``):

- patch embed: 1x1 conv-BN, GELU, 1x1 conv-BN (stride 1, the map stays at input resolution);
- stage 0: MBConv blocks (1x1 conv-BN, GELU, 3x3 depthwise conv-BN, GELU, 1x1 conv-BN, + input, GELU);
- patch merging between stages: 1x1 conv-BN, GELU, 3x3 depthwise conv-BN (stride 2 into stages 1
  and 2, stride 1 afterwards), GELU, 1x1 conv-BN;
- stages 1..n: TinyViT blocks (window attention + input; 3x3 depthwise conv-BN, no residual;
  MLP + input);
- neck: 1x1 conv, LayerNorm over channels, 3x3 conv, LayerNorm over channels (eps 1e-6).

Inference-only choices that make it fast on CPU:

- every conv-BN pair is folded into one convolution with a bias when the weights are loaded;
- on the CPU in float32, every 1x1 convolution and linear layer is one oneDNN call with the GELU
  or the residual addition that follows it fused in (``models/onednn``), and so is each depthwise
  convolution of the inverted bottlenecks with its GELU; where the fused calls fail their check,
  the plain ops run;
- feature maps stay channels-last (B, H, W, C) from end to end: 1x1 convolutions are plain
  ``linear`` calls, depthwise convolutions run on the channels-last view of the same memory, so
  there is no layout shuffling between the convolution and the transformer parts;
- window attention uses ``scaled_dot_product_attention`` on all windows at once, with the
  relative-position bias gathered once at load time into a dense (1, heads, N, N) buffer (the
  4-D mask is what lets SDPA use its fused CPU kernel);
- on the CPU, the memory-bound parts run in cache-sized pieces: the inverted bottlenecks (stage
  0's MBConvs, 256 channels at 256 x 256, and the patch mergings) in stripes of rows with a
  recomputed halo, the MLPs of large maps in chunks of tokens. Results are unchanged;
- bfloat16/float16 convolutions run in float32 on CPUs whose oneDNN lacks them (AVX2-only).
  The matrix products stay in the module's dtype, so bfloat16 is only fast on CPUs with
  native bfloat16 (AVX-512 BF16 / AMX) or on GPUs.

A background run (``base/preemption``) may stop between blocks and between stripes.

Window attention follows the original exactly: the map is zero padded at the bottom/right to a
multiple of the window, the padded positions take part in attention unmasked (they pass through
the attention's LayerNorm like any token), and the bias for a pair of positions is the table
column ``|dy| * window + |dx|``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_medsam.base.preemption import preemption_point
from napari_medsam.models.onednn import fused_ok, linear

__all__ = ["TinyViT", "merge_stride", "relative_position_index"]

_BN_EPS = 1e-5  # torch.nn.BatchNorm2d default, used by every conv-BN of the checkpoint
_LN_EPS = 1e-5  # torch.nn.LayerNorm default: attention and MLP norms
_NECK_LN_EPS = 1e-6  # the neck's LayerNorm2d


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x)  # exact (erf) GELU, as torch.nn.GELU()


def _cpu_conv_is_slow(dtype: torch.dtype) -> bool:
    """True where oneDNN has no native ``dtype`` convolution (bfloat16/float16 on AVX2-only CPUs).

    There PyTorch falls back to a per-channel reference convolution that is 10-50x slower than
    float32, so such convolutions are computed in float32 instead (they are memory-bound and
    cheap next to the matrix multiplications).
    """
    try:
        if dtype == torch.bfloat16:
            return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
        return not torch.ops.mkldnn._is_mkldnn_fp16_supported()
    except (AttributeError, RuntimeError):  # pragma: no cover - builds without oneDNN
        return True


_SLOW_CPU_CONV: dict[torch.dtype, bool] = {}


def _conv2d(x: Tensor, weight: Tensor, bias: Tensor | None, **kwargs) -> Tensor:
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        if x.dtype not in _SLOW_CPU_CONV:
            _SLOW_CPU_CONV[x.dtype] = _cpu_conv_is_slow(x.dtype)
        if _SLOW_CPU_CONV[x.dtype]:
            b = None if bias is None else bias.float()
            return F.conv2d(x.float(), weight.float(), b, **kwargs).to(x.dtype)
    return F.conv2d(x, weight, bias, **kwargs)


class _DepthwiseConv(nn.Module):
    """Depthwise k x k convolution with bias on a channels-last (B, H, W, C) map."""

    def __init__(self, channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.zeros(channels, 1, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, row_padding: int | None = None, gelu: bool = False) -> Tensor:
        """The convolution (rows padded by ``row_padding``, default the kernel's), then GELU if ``gelu``."""
        # (B, H, W, C) contiguous is (B, C, H, W) in channels_last memory format: no copy.
        rows = self.padding if row_padding is None else row_padding
        if gelu and fused_ok(x):  # the GELU fused into oneDNN's convolution
            y = torch.ops.mkldnn._convolution_pointwise(
                x.permute(0, 3, 1, 2), self.weight, self.bias, [rows, self.padding], [self.stride] * 2,
                [1, 1], self.weight.shape[0], "gelu", [], "none",
            )  # fmt: skip
            return y.permute(0, 2, 3, 1)
        y = _conv2d(
            x.permute(0, 3, 1, 2),
            self.weight,
            self.bias,
            stride=self.stride,
            padding=(rows, self.padding),
            groups=self.weight.shape[0],
        )
        y = y.permute(0, 2, 3, 1)
        return _gelu(y) if gelu else y


class _InvertedBottleneck(nn.Module):
    """1x1 conv, GELU, depthwise k x k conv (stride s), GELU, 1x1 conv on a (B, H, W, C) map.

    With ``residual`` (an MBConv block) the input is added and a last GELU applied; without it
    (a patch merging) the widths and the stride may change.

    On the CPU the map goes through in stripes of about ``STRIPE_ROWS`` input rows, each with
    the halo rows the depthwise conv needs recomputed: the wide hidden map (256 channels at
    256 x 256 in stage 0, the memory-bound part of the encoder) then stays in cache between the
    three convolutions. The result is identical to the unstriped computation. An exported graph
    (ONNX) is unstriped: ONNX Runtime plans its own memory.
    """

    STRIPE_ROWS = 32

    def __init__(
        self, dim: int, hidden: int, out_dim: int, kernel_size: int, stride: int, residual: bool
    ) -> None:
        super().__init__()
        if residual and (dim != out_dim or stride != 1):
            raise ValueError("a residual bottleneck keeps width and resolution")
        self.residual = residual
        self.conv1 = nn.Linear(dim, hidden)
        self.conv2 = _DepthwiseConv(hidden, kernel_size, stride)
        self.conv3 = nn.Linear(hidden, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        h = x.shape[1]
        k = self.conv2.weight.shape[-1]
        s, p = self.conv2.stride, self.conv2.padding
        h_out = (h + 2 * p - k) // s + 1
        rows = max(1, self.STRIPE_ROWS // s)
        if x.device.type != "cpu" or h_out <= rows or torch.compiler.is_exporting():
            return self._rows(x, 0, h_out)
        b, _, w, _ = x.shape
        w_out = (w + 2 * p - k) // s + 1
        out = x.new_empty(b, h_out, w_out, self.conv3.out_features)
        for r0 in range(0, h_out, rows):
            preemption_point()
            r1 = min(h_out, r0 + rows)
            out[:, r0:r1] = self._rows(x, r0, r1)
        return out

    def _rows(self, x: Tensor, r0: int, r1: int) -> Tensor:
        """Output rows [r0, r1)."""
        h = x.shape[1]
        k = self.conv2.weight.shape[-1]
        s, p = self.conv2.stride, self.conv2.padding
        first, last = s * r0 - p, s * (r1 - 1) - p + k  # input rows the depthwise conv reads
        a0, a1 = max(0, first), min(h, last)
        hidden = linear(self.conv1, x[:, a0:a1], gelu=True)
        # rows beyond the image border: the depthwise conv's zero padding of the hidden map
        top, bottom = a0 - first, last - a1
        if top or bottom:
            hidden = F.pad(hidden, (0, 0, 0, 0, top, bottom))
        hidden = self.conv2(hidden, row_padding=0, gelu=True)
        if self.residual:
            return _gelu(linear(self.conv3, hidden, add=x[:, r0:r1]))
        return linear(self.conv3, hidden)


def _mbconv(dim: int, hidden: int, kernel_size: int = 3) -> _InvertedBottleneck:
    return _InvertedBottleneck(dim, hidden, dim, kernel_size, 1, residual=True)


def _patch_merging(dim: int, out_dim: int, stride: int, kernel_size: int = 3) -> _InvertedBottleneck:
    return _InvertedBottleneck(dim, out_dim, out_dim, kernel_size, stride, residual=False)


def relative_position_index(window: int) -> Tensor:
    """(N, N) index into the bias table: ``|dy| * window + |dx|`` for positions in row-major order."""
    coords = torch.arange(window)
    rows = coords.repeat_interleave(window)  # row of each of the N = window**2 positions
    cols = coords.repeat(window)
    dy = (rows[:, None] - rows[None, :]).abs()
    dx = (cols[:, None] - cols[None, :]).abs()
    return dy * window + dx


class _WindowAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.window = window
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.qkv = nn.Linear(dim, 3 * dim)  # per head: q, k, v of head_dim each
        self.proj = nn.Linear(dim, dim)
        n = window * window
        # (1, heads, N, N): a 4-D mask lets SDPA use its fused CPU kernel
        self.register_buffer("attn_bias", torch.zeros(1, num_heads, n, n))

    def set_bias_table(self, table: Tensor) -> None:
        """Gather the (heads, window**2) table into the dense (1, heads, N, N) bias buffer."""
        self.attn_bias.copy_(table[:, relative_position_index(self.window)].unsqueeze(0))

    def forward(self, x: Tensor) -> Tensor:
        """Attention within windows of a (B, H, W, C) map; returns the update, same shape."""
        b, h, w, c = x.shape
        ws = self.window
        pad_b = (-h) % ws
        pad_r = (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        n = ws * ws
        # window partition: (B*nH*nW, N, C)
        windows = x.reshape(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(-1, n, c)
        qkv = linear(self.qkv, self.norm(windows))
        heads = self.num_heads
        q, k, v = qkv.view(-1, n, heads, 3, c // heads).permute(3, 0, 2, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=self.attn_bias)
        out = linear(self.proj, out.transpose(1, 2).reshape(-1, n, c))
        # window reverse, crop the padding
        out = out.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            out = out[:, :h, :w]
        return out


class _Mlp(nn.Module):
    # Token chunk for the CPU: 2048 tokens x 512 hidden float32 = 4 MiB stays in cache.
    CHUNK_TOKENS = 2048

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=_LN_EPS)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def _residual(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        y = linear(self.fc2, linear(self.fc1, self.norm(x), gelu=True), add=x)
        if out is None:
            return y
        return out.copy_(y)

    def forward(self, x: Tensor) -> Tensor:
        """``x + mlp(x)``; on the CPU, large maps go through in chunks of tokens."""
        chunk = self.CHUNK_TOKENS
        tokens = x.reshape(-1, x.shape[-1])
        n = tokens.shape[0]
        if x.device.type != "cpu" or n <= 2 * chunk or torch.compiler.is_exporting():
            return self._residual(x)
        out = torch.empty_like(tokens)
        for start in range(0, n, chunk):
            self._residual(tokens[start : start + chunk], out=out[start : start + chunk])
        return out.view(x.shape)


class _TinyViTBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, window: int, mlp_hidden: int, local_conv_size: int) -> None:
        super().__init__()
        self.attn = _WindowAttention(dim, num_heads, window)
        self.local_conv = _DepthwiseConv(dim, local_conv_size)
        self.mlp = _Mlp(dim, mlp_hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(x)
        x = self.local_conv(x)
        return self.mlp(x)  # includes the residual


class _Stage(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module], downsample: nn.Module | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            preemption_point()
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def _dtype_of(module: nn.Module) -> torch.dtype:
    """The dtype of ``module``'s weights."""
    return next(module.parameters()).dtype


class _LayerNormChannels(nn.LayerNorm):
    """LayerNorm over the channels of a channels-last map (the neck's LayerNorm2d)."""


def merge_stride(stage: int) -> int:
    """Stride of the patch merging that leads into ``stage`` (1-based stages after the MBConvs).

    Two stride-2 mergings take the 256 x 256 map to 64 x 64; later ones keep the resolution
    (LiteMedSAM's 160 -> 320 merging has stride 1).
    """
    return 2 if stage <= 2 else 1


class TinyViT(nn.Module):
    """LiteMedSAM's TinyViT image encoder with folded batch norms (inference only).

    Build it with :meth:`from_state_dict`; the constructor only lays out empty modules.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        *,
        in_chans: int = 3,
        patch_embed_hidden: int | None = None,
        mbconv_hidden: int | None = None,
        mlp_hiddens: Sequence[int] | None = None,
        local_conv_size: int = 3,
        merge_kernel_size: int = 3,
        mbconv_kernel_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        n_stages = len(embed_dims)
        if not (len(depths) == len(num_heads) == len(window_sizes) == n_stages):
            raise ValueError("embed_dims, depths, num_heads and window_sizes differ in length")
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_sizes = tuple(window_sizes)
        dim0 = embed_dims[0]
        pe_hidden = patch_embed_hidden or dim0 // 2
        mb_hidden = mbconv_hidden or 4 * dim0
        mlp_hiddens = tuple(mlp_hiddens) if mlp_hiddens else tuple(4 * d for d in embed_dims)

        self.patch_embed = nn.ModuleList([nn.Linear(in_chans, pe_hidden), nn.Linear(pe_hidden, dim0)])
        stages: list[_Stage] = []
        for i, dim in enumerate(embed_dims):
            blocks: list[nn.Module]
            if i == 0:
                blocks = [_mbconv(dim, mb_hidden, mbconv_kernel_size) for _ in range(depths[0])]
            else:
                blocks = [
                    _TinyViTBlock(dim, num_heads[i], window_sizes[i], mlp_hiddens[i], local_conv_size)
                    for _ in range(depths[i])
                ]
            downsample = None
            if i + 1 < n_stages:
                downsample = _patch_merging(dim, embed_dims[i + 1], merge_stride(i + 1), merge_kernel_size)
            stages.append(_Stage(blocks, downsample))
        self.stages = nn.ModuleList(stages)
        self.neck_conv1 = nn.Linear(embed_dims[-1], out_chans, bias=False)
        self.neck_norm1 = _LayerNormChannels(out_chans, eps=_NECK_LN_EPS)
        self.neck_conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.neck_norm2 = _LayerNormChannels(out_chans, eps=_NECK_LN_EPS)
        self.eval()
        self.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, out_chans, H / 4, W / 4); (B, 3, 256, 256) -> (B, 256, 64, 64).

        Each part runs in the dtype its weights are held in (:meth:`with_part_dtypes`); the map is cast
        where two parts differ, and the embedding comes out in the neck's dtype.
        """
        weight = self.neck_conv2.weight
        x = pixel_values.to(device=weight.device, dtype=self.patch_embed[0].weight.dtype).permute(0, 2, 3, 1)
        x = linear(self.patch_embed[0], x, gelu=True)
        x = linear(self.patch_embed[1], x)
        for stage in self.stages:
            x = stage(x.to(_dtype_of(stage)))
        x = self.neck_norm1(linear(self.neck_conv1, x.to(weight.dtype)))
        x = _conv2d(x.permute(0, 3, 1, 2), self.neck_conv2.weight, None, padding=1)
        x = x.permute(0, 2, 3, 1)
        x = self.neck_norm2(x)
        return x.permute(0, 3, 1, 2).contiguous()

    def part_names(self) -> tuple[str, ...]:
        """The parts that may each run in their own dtype: ``patch_embed``, ``stage0``.. (each with
        the patch merging that ends it), ``neck``."""
        return ("patch_embed", *(f"stage{i}" for i in range(len(self.stages))), "neck")

    def with_part_dtypes(self, dtypes: Mapping[str, torch.dtype]) -> TinyViT:
        """A copy whose named parts (:meth:`part_names`) are held, and run, in the given dtypes; the
        other parts keep theirs. The weights are rounded from this model's, so a float32 part of a
        copy of a float32 model is exact."""
        import copy

        parts = self._parts()
        unknown = sorted(set(dtypes) - set(parts))
        if unknown:
            raise ValueError(f"unknown part(s) {', '.join(unknown)}: use {', '.join(parts)}")
        model = copy.deepcopy(self)
        copied = model._parts()
        for name, dtype in dtypes.items():
            for module in copied[name]:
                module.to(dtype)
        return model

    def _parts(self) -> dict[str, list[nn.Module]]:
        stages = {f"stage{i}": [stage] for i, stage in enumerate(self.stages)}
        neck = [self.neck_conv1, self.neck_norm1, self.neck_conv2, self.neck_norm2]
        return {"patch_embed": [self.patch_embed], **stages, "neck": neck}

    # ----------------------------------------------------------------------------- loading

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Tensor], prefix: str = "image_encoder.") -> TinyViT:
        """Build the encoder from a LiteMedSAM-style state dict, folding every conv-BN pair.

        Widths, depths, heads, windows and hidden sizes are read from the tensor shapes, so
        smaller checkpoints of the same layout load too. Every ``prefix*`` key must be used
        exactly once and have the expected shape; otherwise a ``ValueError`` names the key.
        The model comes back in eval mode, float32, on the CPU.
        """
        reader = _StateDictReader(state_dict, prefix)
        model = cls(**_infer_architecture(reader))
        with torch.no_grad():
            model._load(reader)
        reader.check_all_used()
        return model.eval()

    @torch.no_grad()
    def _load(self, r: _StateDictReader) -> None:
        in_chans = self.patch_embed[0].in_features
        pe_hidden = self.patch_embed[0].out_features
        dim0 = self.embed_dims[0]
        _set_linear(self.patch_embed[0], *r.conv_bn("patch_embed.seq.0", (pe_hidden, in_chans, 1, 1)))
        _set_linear(self.patch_embed[1], *r.conv_bn("patch_embed.seq.2", (dim0, pe_hidden, 1, 1)))
        for i, stage in enumerate(self.stages):
            dim = self.embed_dims[i]
            for j, block in enumerate(stage.blocks):
                p = f"layers.{i}.blocks.{j}"
                if isinstance(block, _InvertedBottleneck):
                    hidden = block.conv1.out_features
                    k = block.conv2.weight.shape[-1]
                    _set_linear(block.conv1, *r.conv_bn(f"{p}.conv1", (hidden, dim, 1, 1)))
                    _set_depthwise(block.conv2, *r.conv_bn(f"{p}.conv2", (hidden, 1, k, k)))
                    _set_linear(block.conv3, *r.conv_bn(f"{p}.conv3", (dim, hidden, 1, 1)))
                else:
                    assert isinstance(block, _TinyViTBlock)
                    attn = block.attn
                    n = attn.window * attn.window
                    attn.set_bias_table(r.take(f"{p}.attn.attention_biases", (attn.num_heads, n)))
                    _set_norm(attn.norm, r, f"{p}.attn.norm", dim)
                    _set_linear(
                        attn.qkv,
                        r.take(f"{p}.attn.qkv.weight", (3 * dim, dim)),
                        r.take(f"{p}.attn.qkv.bias", (3 * dim,)),
                    )
                    _set_linear(
                        attn.proj,
                        r.take(f"{p}.attn.proj.weight", (dim, dim)),
                        r.take(f"{p}.attn.proj.bias", (dim,)),
                    )
                    hidden = block.mlp.fc1.out_features
                    _set_norm(block.mlp.norm, r, f"{p}.mlp.norm", dim)
                    _set_linear(
                        block.mlp.fc1,
                        r.take(f"{p}.mlp.fc1.weight", (hidden, dim)),
                        r.take(f"{p}.mlp.fc1.bias", (hidden,)),
                    )
                    _set_linear(
                        block.mlp.fc2,
                        r.take(f"{p}.mlp.fc2.weight", (dim, hidden)),
                        r.take(f"{p}.mlp.fc2.bias", (dim,)),
                    )
                    k = block.local_conv.weight.shape[-1]
                    _set_depthwise(block.local_conv, *r.conv_bn(f"{p}.local_conv", (dim, 1, k, k)))
            if stage.downsample is not None:
                ds = stage.downsample
                p = f"layers.{i}.downsample"
                out = ds.conv1.out_features
                k = ds.conv2.weight.shape[-1]
                _set_linear(ds.conv1, *r.conv_bn(f"{p}.conv1", (out, dim, 1, 1)))
                _set_depthwise(ds.conv2, *r.conv_bn(f"{p}.conv2", (out, 1, k, k)))
                _set_linear(ds.conv3, *r.conv_bn(f"{p}.conv3", (out, out, 1, 1)))
        out_chans = self.neck_conv1.out_features
        self.neck_conv1.weight.copy_(
            r.take("neck.0.weight", (out_chans, self.embed_dims[-1], 1, 1)).flatten(1)
        )
        _set_norm(self.neck_norm1, r, "neck.1", out_chans)
        self.neck_conv2.weight.copy_(r.take("neck.2.weight", (out_chans, out_chans, 3, 3)))
        _set_norm(self.neck_norm2, r, "neck.3", out_chans)


# --------------------------------------------------------------------------------- helpers


def _set_linear(layer: nn.Linear, weight: Tensor, bias: Tensor | None) -> None:
    layer.weight.copy_(weight.reshape(layer.weight.shape))
    if bias is not None:
        layer.bias.copy_(bias)


def _set_depthwise(conv: _DepthwiseConv, weight: Tensor, bias: Tensor) -> None:
    conv.weight.copy_(weight)
    conv.bias.copy_(bias)


def _set_norm(norm: nn.LayerNorm, r: _StateDictReader, name: str, dim: int) -> None:
    norm.weight.copy_(r.take(f"{name}.weight", (dim,)))
    norm.bias.copy_(r.take(f"{name}.bias", (dim,)))


class _StateDictReader:
    """Hands out ``prefix*`` tensors by name with shape checks and records which were used."""

    def __init__(self, state_dict: Mapping[str, Tensor], prefix: str) -> None:
        self.prefix = prefix
        self.tensors = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if not self.tensors:
            raise ValueError(f"no '{prefix}*' keys in the state dict: not a TinyViT checkpoint")
        self.used: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.tensors

    def shape(self, name: str) -> tuple[int, ...]:
        if name not in self.tensors:
            raise ValueError(f"missing key {self.prefix}{name}")
        return tuple(self.tensors[name].shape)

    def take(self, name: str, shape: Sequence[int]) -> Tensor:
        if name not in self.tensors:
            raise ValueError(f"missing key {self.prefix}{name}")
        tensor = self.tensors[name]
        if tuple(tensor.shape) != tuple(shape):
            raise ValueError(
                f"key {self.prefix}{name} has shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            )
        self.used.add(name)
        return tensor.detach().to(torch.float64)

    def conv_bn(self, name: str, weight_shape: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Fold ``name.c`` (conv without bias) and ``name.bn`` into one (weight, bias) pair."""
        out = weight_shape[0]
        weight = self.take(f"{name}.c.weight", weight_shape)
        gamma = self.take(f"{name}.bn.weight", (out,))
        beta = self.take(f"{name}.bn.bias", (out,))
        mean = self.take(f"{name}.bn.running_mean", (out,))
        var = self.take(f"{name}.bn.running_var", (out,))
        if self.has(f"{name}.bn.num_batches_tracked"):  # bookkeeping only
            self.take(f"{name}.bn.num_batches_tracked", ())
        scale = gamma / torch.sqrt(var + _BN_EPS)
        folded_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        folded_bias = beta - mean * scale
        return folded_weight, folded_bias

    def check_all_used(self) -> None:
        unused = sorted(set(self.tensors) - self.used)
        if unused:
            names = ", ".join(self.prefix + k for k in unused[:5])
            more = f" (and {len(unused) - 5} more)" if len(unused) > 5 else ""
            raise ValueError(f"unexpected key(s) {names}{more}: not LiteMedSAM's TinyViT layout")


_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def _infer_architecture(r: _StateDictReader) -> dict:
    """Read widths, depths, heads, windows and hidden sizes from the tensor shapes."""
    stage_ids = {int(m.group(1)) for k in r.tensors if (m := _LAYER_KEY.match(k))}
    if not stage_ids:
        raise ValueError(f"missing key {r.prefix}layers.0.blocks.0.conv1.c.weight")
    n_stages = max(stage_ids) + 1
    for i in range(n_stages):
        if i not in stage_ids:
            raise ValueError(f"missing keys {r.prefix}layers.{i}.*")
    depths = []
    for i in range(n_stages):
        ids = {int(m.group(2)) for k in r.tensors if (m := _BLOCK_KEY.match(k)) and int(m.group(1)) == i}
        depth = max(ids) + 1 if ids else 0
        for j in range(depth):
            if j not in ids:
                raise ValueError(f"missing keys {r.prefix}layers.{i}.blocks.{j}.*")
        if depth == 0:
            raise ValueError(f"missing keys {r.prefix}layers.{i}.blocks.0.*")
        depths.append(depth)

    pe_hidden, in_chans = r.shape("patch_embed.seq.0.c.weight")[:2]
    mbconv_hidden, dim0, _, _ = r.shape("layers.0.blocks.0.conv1.c.weight")
    mbconv_kernel = r.shape("layers.0.blocks.0.conv2.c.weight")[-1]
    embed_dims = [dim0]
    num_heads = [1]
    window_sizes = [1]
    mlp_hiddens = [4 * dim0]
    local_conv_size = 3
    for i in range(1, n_stages):
        p = f"layers.{i}.blocks.0"
        (dim,) = r.shape(f"{p}.attn.norm.weight")
        heads, table = r.shape(f"{p}.attn.attention_biases")
        window = math.isqrt(table)
        if window * window != table:
            raise ValueError(
                f"key {r.prefix}{p}.attn.attention_biases has {table} columns, not a square window"
            )
        embed_dims.append(dim)
        num_heads.append(heads)
        window_sizes.append(window)
        mlp_hiddens.append(r.shape(f"{p}.mlp.fc1.weight")[0])
        local_conv_size = r.shape(f"{p}.local_conv.c.weight")[-1]
    merge_kernel = r.shape("layers.0.downsample.conv2.c.weight")[-1] if n_stages > 1 else 3
    (out_chans,) = r.shape("neck.1.weight")
    return {
        "embed_dims": embed_dims,
        "depths": depths,
        "num_heads": num_heads,
        "window_sizes": window_sizes,
        "in_chans": in_chans,
        "patch_embed_hidden": pe_hidden,
        "mbconv_hidden": mbconv_hidden,
        "mlp_hiddens": mlp_hiddens,
        "local_conv_size": local_conv_size,
        "merge_kernel_size": merge_kernel,
        "mbconv_kernel_size": mbconv_kernel,
        "out_chans": out_chans,
    }

"""The plain way of doing napari-medsam's work, as the benchmark's baseline.

- :class:`PlainPredictor`: our preprocessing and post-processing around a transformers
  ``SamModel`` in float32 with its default settings (SDPA attention): ``get_image_embeddings``
  (or a plain TinyViT for LiteMedSAM), then ``SamModel(image_embeddings=..., input_boxes=...)``.
  No embedding cache, no fast paths. It has the predictor methods ``propagate`` uses.
- :class:`PlainTinyViT`: LiteMedSAM's TinyViT written the way the original code is (convolution
  then BatchNorm, windows reshaped, attention scores with an explicit bias), from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from napari_medsam.base.pixels import check_image
from napari_medsam.base.windows import check_window
from napari_medsam.engine.predictor import Prediction, cell_coverage
from napari_medsam.models.preprocessing import (
    masks_from_logits,
    model_input,
    scale_box,
    to_rgb_uint8,
)
from napari_medsam.models.tinyvit import relative_position_index


class PlainPredictor:
    """set_image / predict the plain way (float32, no cache, transformers' forward)."""

    def __init__(self, family: str, sam: nn.Module, encoder: nn.Module) -> None:
        self.family = family
        self.sam = sam.float().eval()
        self.encoder = encoder.float().eval()
        self.embedding: Tensor | None = None
        self.geometry = None
        self.store = None  # no embedding store: every slice is encoded

    def set_image(self, image: np.ndarray, window: Sequence[float] | None = None) -> None:
        pixels, geometry = model_input(to_rgb_uint8(check_image(image), check_window(window)), self.family)
        with torch.inference_mode():
            self.embedding = self.encoder(torch.from_numpy(pixels)[None])
        self.geometry = geometry

    def precompute(self, image: np.ndarray, window: Sequence[float] | None = None) -> bool:
        self.set_image(image, window)
        return True

    def coverage(self, mask: np.ndarray) -> np.ndarray:
        """The cells' coverage by ``mask``, as napari-medsam's predictor gives it (the walk needs it)."""
        return cell_coverage(mask, self.geometry, self.embedding.shape[-1])

    def cells(self) -> np.ndarray:
        """The embedding as one float32 vector per cell (64, 64, 256)."""
        return np.ascontiguousarray(self.embedding[0].float().numpy().transpose(1, 2, 0))

    def predict(
        self, box: Sequence[float] | None = None, mask_input: object = None, **_: object
    ) -> Prediction:
        return self.predict_boxes([box])[0]

    def predict_boxes(self, boxes: Sequence[Sequence[float]]) -> list[Prediction]:
        """All boxes in one batched decoder call (transformers repeats the embedding per box)."""
        scaled = np.stack([scale_box(np.asarray(b, dtype=np.float64), self.geometry) for b in boxes])
        with torch.inference_mode():
            out = self.sam(
                image_embeddings=self.embedding,
                input_boxes=torch.tensor(scaled[None], dtype=torch.float32),
                multimask_output=False,
            )
            logits = out.pred_masks[0, :, 0].float()  # (n_boxes, 256, 256)
            masks = masks_from_logits(logits, self.geometry)
        return [
            Prediction(mask=masks[i].numpy(), score=float(out.iou_scores[0, i, 0]), logits=logits[i].numpy())
            for i in range(len(boxes))
        ]


class SamGetImageEmbeddings(nn.Module):
    """``sam.get_image_embeddings`` as a module."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, pixel_values: Tensor) -> Tensor:
        return self.sam.get_image_embeddings(pixel_values)


# ------------------------------------------------------------------------- plain TinyViT


def _conv_bn(x: Tensor, sd: Mapping[str, Tensor], name: str, stride: int = 1, groups: int = 1) -> Tensor:
    weight = sd[f"{name}.c.weight"]
    y = F.conv2d(x, weight, None, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
    bn = f"{name}.bn"
    mean, var = sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"]
    return F.batch_norm(y, mean, var, sd[f"{bn}.weight"], sd[f"{bn}.bias"], False, 0.0, 1e-5)


class PlainTinyViT(nn.Module):
    """LiteMedSAM's TinyViT (64/128/160/320, depths 2/2/6/2) as the original code computes it."""

    def __init__(self, state_dict: Mapping[str, Tensor], prefix: str = "image_encoder.") -> None:
        super().__init__()
        self.sd = {k[len(prefix) :]: v.float() for k, v in state_dict.items() if k.startswith(prefix)}
        self.depths = (2, 2, 6, 2)
        self.heads = (0, 4, 5, 10)
        self.windows = (0, 7, 14, 7)
        self.index = {w: relative_position_index(w) for w in (7, 14)}

    def forward(self, pixel_values: Tensor) -> Tensor:
        sd = self.sd
        x = F.gelu(_conv_bn(pixel_values.float(), sd, "patch_embed.seq.0"))
        x = _conv_bn(x, sd, "patch_embed.seq.2")
        for i, depth in enumerate(self.depths):
            for j in range(depth):
                p = f"layers.{i}.blocks.{j}"
                if i == 0:
                    y = F.gelu(_conv_bn(x, sd, f"{p}.conv1"))
                    y = F.gelu(_conv_bn(y, sd, f"{p}.conv2", groups=y.shape[1]))
                    x = F.gelu(_conv_bn(y, sd, f"{p}.conv3") + x)
                else:
                    x = self._block(x, p, self.heads[i], self.windows[i])
            if i + 1 < len(self.depths):
                p = f"layers.{i}.downsample"
                x = F.gelu(_conv_bn(x, sd, f"{p}.conv1"))
                x = F.gelu(_conv_bn(x, sd, f"{p}.conv2", stride=2 if i < 2 else 1, groups=x.shape[1]))
                x = _conv_bn(x, sd, f"{p}.conv3")
        x = F.conv2d(x, sd["neck.0.weight"])
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], sd["neck.1.weight"], sd["neck.1.bias"], 1e-6)
        x = F.conv2d(x.permute(0, 3, 1, 2), sd["neck.2.weight"], padding=1)
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], sd["neck.3.weight"], sd["neck.3.bias"], 1e-6)
        return x.permute(0, 3, 1, 2).contiguous()

    def _block(self, x: Tensor, p: str, heads: int, ws: int) -> Tensor:
        sd = self.sd
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).view(b, h, w, c)
        pad_b, pad_r = (-h) % ws, (-w) % ws
        padded = F.pad(tokens, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        win = padded.view(b, hp // ws, ws, wp // ws, ws, c).transpose(2, 3).reshape(-1, ws * ws, c)
        n = ws * ws
        y = F.layer_norm(win, (c,), sd[f"{p}.attn.norm.weight"], sd[f"{p}.attn.norm.bias"], 1e-5)
        qkv = F.linear(y, sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.view(-1, n, heads, 3, c // heads).permute(3, 0, 2, 1, 4).unbind(0)
        bias = sd[f"{p}.attn.attention_biases"][:, self.index[ws]]
        attn = (q @ k.transpose(-2, -1)) * (c // heads) ** -0.5 + bias
        out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
        out = F.linear(out, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        out = out.view(b, hp // ws, wp // ws, ws, ws, c).transpose(2, 3).reshape(b, hp, wp, c)
        tokens = tokens + out[:, :h, :w]
        x = tokens.permute(0, 3, 1, 2)
        x = _conv_bn(x, sd, f"{p}.local_conv", groups=c)
        t = x.permute(0, 2, 3, 1)
        m = F.layer_norm(t, (c,), sd[f"{p}.mlp.norm.weight"], sd[f"{p}.mlp.norm.bias"], 1e-5)
        m = F.linear(F.gelu(F.linear(m, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                     sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        return (t + m).permute(0, 3, 1, 2)

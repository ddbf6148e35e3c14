"""SAM's prompt encoder + mask decoder, arranged so that no work is repeated per prompt.

Same weights and the same mathematics as transformers' ``SamModel`` called with
``image_embeddings=...``; only the order of operations differs:

- per model, once: the image-wide positional encoding (64 x 64 x 256);
- per image, once (while no mask prompt is given): the embedding plus the "no mask" embedding, and
  the first two-way layer's image-side projections (keys and values for tokens -> image, queries
  for image -> tokens), which depend on the image only;
- per prompt: only work on the handful of prompt tokens, and attention rewritten so that the
  large image-side projections are never formed. For tokens -> image attention with query ``q``
  the scores are ``(q W_k) X^T`` (the key bias adds a per-row constant, which the softmax
  ignores) and the output ``(P X) W_v^T + b_v`` (rows of ``P`` sum to 1); for image -> tokens
  the scores are ``X (W_q^T K^T) + b_q K^T`` and the output projection is folded into the
  token values. Each replaces a 4096 x 256 x 128 projection with a 4096 x 256 x (heads x tokens)
  product (8 x 7 = 56 for a box);
- the two transposed 2 x 2 convolutions that upscale the mask features run as matrix products on
  a channels-last layout, and only the mask tokens that are returned get a mask;
- image -> tokens scores are laid out (heads x tokens, N), so each head's softmax over its few
  tokens is a reduction across contiguous rows (4x faster than over a short last dimension);
- with a bfloat16/float16 model, the work on the handful of prompt tokens runs in float32 on a
  float32 copy of the mask decoder (small reduced-precision matrix products are slower there than
  float32 ones on the CPU, and less exact); only the products with the 4096 image tokens, the
  image-side norms and the mask upscaling run in the model's dtype.

The results equal ``SamModel``'s up to float rounding (tested in ``tests/test_fast_paths.py``).
Where the internals it reads are missing or behave differently (another transformers release),
:func:`decode` falls back to ``SamModel``'s own decoder (:func:`plain_decode`).
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from transformers import SamModel

__all__ = ["FastMaskDecoder", "decode", "decoder_for", "plain_decode"]

logger = logging.getLogger(__name__)

_IMAGE_STATES = 4  # per-image states kept (current slice and a few recent ones)
#: Image tokens per chunk of the mask upscaling on the CPU (1024 x 4 x 64 float32 = 1 MB).
UPSCALE_TOKENS_PER_CHUNK = 1024


@dataclass
class _ImageState:
    """What the first two-way layer needs of one image (no mask prompt)."""

    src: Tensor  # (N, C) embedding + no-mask embedding
    k0: Tensor  # (H, d, N) layer 0 tokens -> image keys, per head, transposed, pre-scaled
    v0: Tensor  # (H, N, d) layer 0 tokens -> image values, per head
    q0: Tensor  # (N, D) layer 0 image -> tokens queries


class FastMaskDecoder:
    """Decode prompts on cached image embeddings with a ``SamModel``'s prompt encoder and decoder.

    Thread-safe. Holds a reference to the model, not copies of its weights.
    """

    def __init__(self, sam: SamModel) -> None:
        self.sam = sam
        self._lock = threading.RLock()
        self._pe: Tensor | None = None
        self._pe_key: tuple | None = None
        self._token_decoder: torch.nn.Module | None = None
        self._token_key: tuple | None = None
        self._states: list[tuple[weakref.ref, tuple, _ImageState]] = []

    # ------------------------------------------------------------------ per model / per image

    def _weight(self) -> Tensor:
        return self.sam.mask_decoder.iou_token.weight

    def positional_encoding(self) -> Tensor:
        """The image-wide positional encoding as (N, C) tokens, computed once per model."""
        weight = self._weight()
        key = (weight.device, weight.dtype)
        if self._pe is None or self._pe_key != key:
            size = self.sam.config.prompt_encoder_config.image_embedding_size
            centres = (torch.arange(size, dtype=torch.float32, device=weight.device) + 0.5) / size
            y, x = torch.meshgrid(centres, centres, indexing="ij")
            coords = torch.stack([x, y], dim=-1).view(-1, 2)  # (N, 2) as (x, y), row-major
            gaussian = self.sam.shared_image_embedding.positional_embedding
            self._pe = _fourier_features(coords, gaussian).to(weight.dtype).contiguous()
            self._pe_key = key
        return self._pe

    def token_decoder(self) -> torch.nn.Module:
        """The mask decoder in float32 for the prompt-token work: the model's own when it is float32."""
        decoder = self.sam.mask_decoder
        weight = self._weight()
        if weight.dtype == torch.float32:
            return decoder
        key = (weight.device, weight.dtype)
        if self._token_decoder is None or self._token_key != key:
            self._token_decoder = copy.deepcopy(decoder).float()
            self._token_key = key
        return self._token_decoder

    def _layer0_state(self, src: Tensor) -> _ImageState:
        layer = self.sam.mask_decoder.transformer.layers[0]
        keys_pe = src + self.positional_encoding()
        t2i, i2t = layer.cross_attn_token_to_image, layer.cross_attn_image_to_token
        heads, dim = _heads(t2i)
        n = src.shape[0]
        keys = t2i.k_proj(keys_pe).mul_(t2i.scaling).view(n, heads, dim).permute(1, 2, 0)
        values = t2i.v_proj(src).view(n, heads, dim).transpose(0, 1)
        return _ImageState(
            src=src,
            k0=keys.contiguous(),
            v0=values.contiguous(),
            q0=i2t.q_proj(keys_pe),
        )

    def _image_state(self, embedding: Tensor) -> _ImageState:
        """The no-mask image state of ``embedding`` (1, C, H, W), cached by tensor identity."""
        # Identity, not contents: the predictor makes a new tensor per set_image and never
        # writes into it (inference tensors carry no version counter to check).
        version = (tuple(embedding.shape), embedding.device, embedding.dtype)
        for ref, key, state in self._states:
            if ref() is embedding and key == version:
                return state
        dtype = self._weight().dtype
        no_mask = self.sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1)
        src = (embedding[0].flatten(1).t().to(dtype) + no_mask).contiguous()
        state = self._layer0_state(src)
        self._states = [s for s in self._states if s[0]() is not None][-(_IMAGE_STATES - 1) :]
        self._states.append((weakref.ref(embedding), version, state))
        return state

    def clear(self) -> None:
        """Forget the cached per-image states."""
        with self._lock:
            self._states.clear()

    # ------------------------------------------------------------------ decoding

    def __call__(
        self,
        image_embeddings: Tensor,
        input_points: Tensor | None = None,
        input_labels: Tensor | None = None,
        input_boxes: Tensor | None = None,
        input_masks: Tensor | None = None,
        multimask_output: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Masks for one image and one prompt set, as ``SamModel`` would return them.

        Takes ``SamModel``'s arguments for a batch of one image and one prompt
        (``input_boxes`` (1, 1, 4), ``input_points`` (1, 1, n, 2), ``input_labels`` (1, 1, n),
        ``input_masks`` (1, 1, 256, 256)). Returns ``pred_masks`` (1, 1, M, 256, 256) and
        ``iou_scores`` (1, 1, M) with M = 3 if ``multimask_output`` else 1.
        """
        if image_embeddings.dim() != 4 or image_embeddings.shape[0] != 1:
            raise ValueError(f"image_embeddings must be (1, C, H, W), got {tuple(image_embeddings.shape)}")
        for name, value in (("input_boxes", input_boxes), ("input_points", input_points)):
            if value is not None and value.shape[:2] != (1, 1):
                raise ValueError(f"{name} must hold one prompt for one image, got {tuple(value.shape)}")
        if input_points is not None and input_labels is None:
            input_labels = torch.ones(input_points.shape[:3], dtype=torch.long, device=input_points.device)
        with self._lock, torch.inference_mode():
            return self._decode(
                image_embeddings, input_points, input_labels, input_boxes, input_masks, multimask_output
            )

    def _decode(
        self,
        embedding: Tensor,
        points: Tensor | None,
        labels: Tensor | None,
        boxes: Tensor | None,
        masks: Tensor | None,
        multimask: bool,
    ) -> tuple[Tensor, Tensor]:
        sam = self.sam
        decoder = sam.mask_decoder  # image-side weights, in the model's dtype
        tokens = self.token_decoder()  # prompt-token weights, float32
        dtype = self._weight().dtype
        sparse = _sparse_embeddings(sam.prompt_encoder, points, labels, boxes)
        if masks is None:
            state = self._image_state(embedding)
        else:
            dense = sam.prompt_encoder.mask_embed(masks.to(dtype))
            src = embedding[0].to(dtype) + dense[0]
            state = self._layer0_state(src.flatten(1).t().contiguous())
        output_tokens = torch.cat([tokens.iou_token.weight, tokens.mask_tokens.weight], dim=0)
        # (T, C) float32: the tokens, which are also their own "positional" embedding in every layer
        tokens_pe = torch.cat([output_tokens, sparse], dim=0)

        pe = self.positional_encoding()
        queries, keys = tokens_pe, state.src
        for index, (layer, image_layer) in enumerate(
            zip(tokens.transformer.layers, decoder.transformer.layers, strict=True)
        ):
            # self attention of the tokens
            if layer.skip_first_layer_pe:
                queries = _token_attention(layer.self_attn, queries, queries, queries)
            else:
                q = queries + tokens_pe
                queries = queries + _token_attention(layer.self_attn, q, q, queries)
            queries = layer.layer_norm1(queries)
            # tokens -> image
            q = queries + tokens_pe
            if index == 0:
                keys_pe = None
                out = _attend_cached(layer.cross_attn_token_to_image, q, state.k0, state.v0)
            else:
                keys_pe = keys + pe
                out = _tokens_to_image(layer.cross_attn_token_to_image, q, keys_pe, keys)
            queries = layer.layer_norm2(queries + out)
            queries = layer.layer_norm3(queries + layer.mlp(queries))
            # image -> tokens
            q = queries + tokens_pe
            attn = layer.cross_attn_image_to_token
            if keys_pe is None:
                out = _image_to_tokens(attn, keys, None, q, queries, cached_queries=state.q0)
            else:
                out = _image_to_tokens(attn, keys, keys_pe, q, queries)
            keys = image_layer.layer_norm4(out)
        q = queries + tokens_pe
        out = _tokens_to_image(tokens.transformer.final_attn_token_to_image, q, keys + pe, keys)
        queries = tokens.transformer.layer_norm_final_attn(queries + out)

        chosen = range(1, decoder.num_mask_tokens) if multimask else range(1)
        hyper = torch.stack(
            [tokens.output_hypernetworks_mlps[i](queries[1 + i]) for i in chosen]
        )  # (M, C / 8)
        low_res = _upscaled_masks(decoder, keys, embedding.shape[-2:], hyper)
        iou = tokens.iou_prediction_head(queries[0])
        iou = iou[1:] if multimask else iou[:1]
        return low_res[None, None], iou[None, None]


def _fourier_features(coords: Tensor, gaussian: Tensor) -> Tensor:
    """SAM's random Fourier encoding of (..., 2) coordinates in [0, 1], computed in float32."""
    projected = (2.0 * coords.float() - 1.0) @ gaussian.float()
    projected = projected * (2.0 * torch.pi)
    return torch.cat([torch.sin(projected), torch.cos(projected)], dim=-1)


def _sparse_embeddings(
    prompt_encoder: torch.nn.Module,
    points: Tensor | None,
    labels: Tensor | None,
    boxes: Tensor | None,
) -> Tensor:
    """(T, C) float32 point and box tokens, as ``SamPromptEncoder`` builds them (points first).

    Coordinates are encoded in float32 whatever the model's dtype: in bfloat16 a coordinate in
    [0, 1] has steps of 1/256, four model-input pixels at 1024.
    """
    side = float(prompt_encoder.input_image_size)
    gaussian = prompt_encoder.shared_embedding.positional_embedding
    parts = []
    if points is not None:
        assert labels is not None
        coords = (points[0, 0].float() + 0.5) / side  # (n, 2) as (x, y)
        point_labels = labels[0, 0]
        if boxes is None:  # SAM pads a lone point set with one "not a point"
            coords = torch.cat([coords, coords.new_zeros(1, 2)])
            point_labels = torch.cat([point_labels, point_labels.new_full((1,), -1)])
        embedded = _fourier_features(coords, gaussian)
        label = point_labels[:, None]
        not_a_point = prompt_encoder.not_a_point_embed.weight.float()
        embedded = torch.where(label == -1, not_a_point, embedded)
        embedded = torch.where(label == -10, torch.zeros_like(embedded), embedded)
        for value in (0, 1):  # background, foreground
            embedded = embedded + (label == value) * prompt_encoder.point_embed[value].weight.float()
        parts.append(embedded)
    if boxes is not None:
        corners = ((boxes[0, 0].float() + 0.5) / side).view(2, 2)  # (x0, y0), (x1, y1)
        embedded = _fourier_features(corners, gaussian)
        offsets = torch.cat([prompt_encoder.point_embed[2].weight, prompt_encoder.point_embed[3].weight])
        parts.append(embedded + offsets.float())
    if not parts:
        return prompt_encoder.not_a_point_embed.weight.new_zeros(0, prompt_encoder.hidden_size).float()
    return torch.cat(parts)


def _heads(attn: torch.nn.Module) -> tuple[int, int]:
    heads = attn.num_attention_heads
    return heads, attn.internal_dim // heads


def _token_attention(attn: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``SamAttention`` among a few tokens: q, k, v are (T, C); returns (T, C)."""
    heads, dim = _heads(attn)
    qh = attn.q_proj(q).view(-1, heads, dim).transpose(0, 1)
    kh = attn.k_proj(k).view(-1, heads, dim).permute(1, 2, 0)
    vh = attn.v_proj(v).view(-1, heads, dim).transpose(0, 1)
    probs = _softmax_last(torch.bmm(qh, kh).mul_(attn.scaling))
    out = torch.bmm(probs, vh)  # (H, T, d)
    return attn.out_proj(out.transpose(0, 1).reshape(q.shape[0], -1))


def _attend_cached(attn: torch.nn.Module, q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Tokens (T, C) -> image with precomputed scaled keys (H, d, N) and values (H, N, d)."""
    heads, dim = _heads(attn)
    qh = attn.q_proj(q).view(-1, heads, dim).transpose(0, 1).to(keys.dtype)
    probs = torch.softmax(torch.bmm(qh, keys), dim=-1, dtype=torch.float32).to(values.dtype)
    out = torch.bmm(probs, values).float()  # (H, T, d)
    return attn.out_proj(out.transpose(0, 1).reshape(q.shape[0], -1))


def _tokens_to_image(attn: torch.nn.Module, q: Tensor, keys_pe: Tensor, keys: Tensor) -> Tensor:
    """Tokens (T, C) attend to the image (keys_pe, keys: (N, C)) without projecting the image.

    scores_h = scale * (q_h W_k,h) keys_pe^T (the key bias is a per-row constant: dropped);
    out_h = (P_h keys) W_v,h^T + b_v,h.
    """
    heads, dim = _heads(attn)
    n_tokens, channels = q.shape
    qh = attn.q_proj(q).view(n_tokens, heads, dim)
    w_k = attn.k_proj.weight.view(heads, dim, channels)
    folded = torch.einsum("thd,hdc->htc", qh * attn.scaling, w_k).reshape(heads * n_tokens, channels)
    scores = folded.to(keys_pe.dtype) @ keys_pe.t()  # (H*T, N)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(keys.dtype)
    mixed = (probs @ keys).float().view(heads, n_tokens, channels)  # (H, T, C)
    w_v = attn.v_proj.weight.view(heads, dim, channels)
    out = torch.einsum("htc,hdc->thd", mixed, w_v) + attn.v_proj.bias.view(heads, dim)
    return attn.out_proj(out.reshape(n_tokens, heads * dim))


def _image_to_tokens(
    attn: torch.nn.Module,
    keys: Tensor,
    keys_pe: Tensor | None,
    q_tokens: Tensor,
    v_tokens: Tensor,
    cached_queries: Tensor | None = None,
) -> Tensor:
    """The image (N, C) attends to the tokens (T, C); returns ``keys`` plus the update.

    Image queries come from ``cached_queries`` (N, D) (layer 0: ``keys`` is the cached image
    state and is left alone) or are folded: scores = keys_pe (W_q^T K^T) + b_q K^T (``keys`` is
    then a per-prompt tensor, updated in place). Scores are laid out (H*T, N) so that each
    head's softmax over its T tokens runs across contiguous rows. The output projection is
    folded into the token values.
    """
    heads, dim = _heads(attn)
    n_tokens, channels = q_tokens.shape
    dtype = keys.dtype
    kh = attn.k_proj(q_tokens).mul_(attn.scaling).view(n_tokens, heads, dim)
    vh = attn.v_proj(v_tokens).view(n_tokens, heads, dim)
    if cached_queries is not None:
        # one product with the block-diagonal (H*T, D) keys gives every head's scores in place
        keys_block = torch.block_diag(*kh.permute(1, 0, 2).unbind(0))
        scores = keys_block.to(dtype) @ cached_queries.t()
    else:
        assert keys_pe is not None
        w_q = attn.q_proj.weight.view(heads, dim, channels)
        folded = torch.einsum("thd,hdc->htc", kh, w_q).reshape(heads * n_tokens, channels)
        bias = torch.einsum("thd,hd->ht", kh, attn.q_proj.bias.view(heads, dim)).reshape(-1, 1)
        scores = torch.addmm(bias.to(dtype), folded.to(dtype), keys_pe.t())
    n = scores.shape[1]
    probs = torch.softmax(scores.view(heads, n_tokens, n), dim=1, dtype=torch.float32)
    w_out = attn.out_proj.weight.view(channels, heads, dim)
    values = torch.einsum("thd,chd->htc", vh, w_out).reshape(heads * n_tokens, channels)
    # each head's probabilities sum to 1: adding b_out / heads to every value adds b_out once
    values = values + attn.out_proj.bias / heads
    update = (probs.to(dtype).view(heads * n_tokens, n).t(), values.to(dtype))
    return torch.addmm(keys, *update) if cached_queries is not None else keys.addmm_(*update)


def _softmax_last(scores: Tensor) -> Tensor:
    """Softmax over a short last dimension, in place (2-3x faster than ``torch.softmax`` there)."""
    scores = scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    return scores.div_(scores.sum(-1, keepdim=True))


def _upscaled_masks(
    decoder: torch.nn.Module, keys: Tensor, grid: tuple[int, int] | torch.Size, hyper: Tensor
) -> Tensor:
    """Low-resolution mask logits (M, 4H, 4W) from the final image tokens (N, C).

    Each 2 x 2 stride-2 transposed convolution is one matrix product on channels-last tokens;
    the sub-pixel layout is unfolded once, on the final (M, 4H, 4W) logits. On the CPU the
    tokens go through in chunks whose features stay in cache (about 2x faster than whole maps).
    """
    height, width = int(grid[0]), int(grid[1])
    conv1, conv2, norm = decoder.upscale_conv1, decoder.upscale_conv2, decoder.upscale_layer_norm
    c1, c2 = conv1.out_channels, conv2.out_channels
    # ConvTranspose2d weight (in, out, 2, 2) -> (in, 2 * 2 * out) ordered (dy, dx, out)
    w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.in_channels, 4 * c1)
    w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
    b1, b2 = conv1.bias.repeat(4), conv2.bias.repeat(4)
    hyper = hyper.t().to(keys.dtype)  # (c2, M)
    n = keys.shape[0]
    masks = keys.new_empty(n * 16, hyper.shape[1])
    step = UPSCALE_TOKENS_PER_CHUNK if keys.device.type == "cpu" else n
    for start in range(0, n, step):
        stop = min(n, start + step)
        up = torch.addmm(b1, keys[start:stop], w1).view(-1, 4, c1)  # (n, 4, c1)
        up = F.gelu(F.layer_norm(up, (c1,), norm.weight, norm.bias, norm.eps))
        up = F.gelu(torch.addmm(b2, up.view(-1, c1), w2))  # (n * 4, 4 * c2)
        torch.mm(up.view(-1, c2), hyper, out=masks[start * 16 : stop * 16])
    # (y, x, dy1, dx1, dy2, dx2, M) -> (M, y, dy1, dy2, x, dx1, dx2)
    masks = masks.view(height, width, 2, 2, 2, 2, -1).permute(6, 0, 2, 4, 1, 3, 5)
    return masks.reshape(-1, 4 * height, 4 * width)


_decoders: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_decoders_lock = threading.Lock()


def plain_decode(
    sam: SamModel, image_embeddings: Tensor, multimask_output: bool = False, **prompts: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``SamModel``'s own prompt encoder and mask decoder: the path used when the fast one cannot be."""
    given = {name: value for name, value in prompts.items() if value is not None}
    with torch.inference_mode():
        out = sam(image_embeddings=image_embeddings, multimask_output=multimask_output, **given)
    return out.pred_masks, out.iou_scores


def _fast_path_works(sam: SamModel) -> bool:
    """Whether the fast decoder runs on this transformers version and agrees with ``SamModel``.

    The fast decoder reads ``SamModel`` internals (attribute names, the attention layout); a
    transformers release may change them. One box on a random embedding is decoded both ways
    when a model is first used: an error or a disagreement selects the plain path.
    """
    weight = sam.mask_decoder.iou_token.weight
    channels = sam.config.mask_decoder_config.hidden_size
    size = sam.config.prompt_encoder_config.image_embedding_size
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(1, channels, size, size, generator=generator).to(weight.device, weight.dtype)
    side = sam.config.prompt_encoder_config.image_size
    box = torch.tensor(
        [[[0.2 * side, 0.3 * side, 0.7 * side, 0.8 * side]]], device=weight.device, dtype=weight.dtype
    )
    try:
        fast_masks, fast_scores = FastMaskDecoder(sam)(embedding, input_boxes=box)
    except Exception as err:  # any failure of the internals it relies on
        logger.warning(
            "fast mask decoder unavailable (%s: %s); using SamModel's decoder", type(err).__name__, err
        )
        return False
    masks, scores = plain_decode(sam, embedding, input_boxes=box)
    same_scores = bool(torch.allclose(fast_scores.float(), scores.float(), atol=0.02))
    same_masks = (
        fast_masks.shape == masks.shape and float(((fast_masks > 0) == (masks > 0)).float().mean()) > 0.999
    )
    agree = same_masks and same_scores
    if not agree:
        logger.warning(
            "fast mask decoder disagrees with SamModel on this transformers version; using SamModel's"
        )
    return agree


def decoder_for(sam: SamModel) -> FastMaskDecoder | None:
    """The shared :class:`FastMaskDecoder` of ``sam``; None where only the plain decoder works."""
    with _decoders_lock:
        if sam not in _decoders:
            _decoders[sam] = FastMaskDecoder(sam) if _fast_path_works(sam) else None
        return _decoders[sam]


def decode(sam: SamModel, image_embeddings: Tensor, **prompts: object) -> tuple[Tensor, Tensor]:
    """``(pred_masks, iou_scores)`` of ``sam`` for one image and one prompt (see FastMaskDecoder)."""
    decoder = decoder_for(sam)
    if decoder is None:
        return plain_decode(sam, image_embeddings, **prompts)  # type: ignore[arg-type]
    return decoder(image_embeddings, **prompts)  # type: ignore[arg-type]

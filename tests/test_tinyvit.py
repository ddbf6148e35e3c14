"""TinyViT: batch-norm folding, window attention details, strict loading of the real checkpoint."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from napari_medsam.models.tinyvit import TinyViT, relative_position_index

# ------------------------------------------------------------------ a small random checkpoint

SMALL = {
    "embed_dims": (16, 24, 32, 48),
    "depths": (2, 1, 2, 1),
    "num_heads": (1, 2, 2, 3),
    "window_sizes": (7, 7, 14, 7),
    "out_chans": 32,
}


def _conv_bn(sd: dict, name: str, shape: tuple[int, ...], gen: torch.Generator) -> None:
    out = shape[0]
    fan_in = shape[1] * shape[2] * shape[3]
    sd[f"{name}.c.weight"] = torch.randn(shape, generator=gen) / fan_in**0.5
    # non-trivial BN: scale, shift, running stats far from (0, 1)
    sd[f"{name}.bn.weight"] = 0.5 + torch.rand(out, generator=gen)
    sd[f"{name}.bn.bias"] = 0.3 * torch.randn(out, generator=gen)
    sd[f"{name}.bn.running_mean"] = 0.5 * torch.randn(out, generator=gen)
    sd[f"{name}.bn.running_var"] = 0.2 + 2.0 * torch.rand(out, generator=gen)
    sd[f"{name}.bn.num_batches_tracked"] = torch.tensor(1000)


def _linear(sd: dict, name: str, out: int, inp: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = torch.randn(out, inp, generator=gen) / inp**0.5
    sd[f"{name}.bias"] = 0.1 * torch.randn(out, generator=gen)


def _norm(sd: dict, name: str, dim: int, gen: torch.Generator) -> None:
    sd[f"{name}.weight"] = 1.0 + 0.2 * torch.randn(dim, generator=gen)
    sd[f"{name}.bias"] = 0.2 * torch.randn(dim, generator=gen)


def make_state_dict(
    embed_dims=SMALL["embed_dims"],
    depths=SMALL["depths"],
    num_heads=SMALL["num_heads"],
    window_sizes=SMALL["window_sizes"],
    out_chans=SMALL["out_chans"],
    seed: int = 0,
    prefix: str = "image_encoder.",
) -> dict[str, torch.Tensor]:
    """Random weights in LiteMedSAM's key layout (segment-anything / TinyViT names)."""
    gen = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    d0 = embed_dims[0]
    _conv_bn(sd, "patch_embed.seq.0", (d0 // 2, 3, 1, 1), gen)
    _conv_bn(sd, "patch_embed.seq.2", (d0, d0 // 2, 1, 1), gen)
    for i, dim in enumerate(embed_dims):
        for j in range(depths[i]):
            p = f"layers.{i}.blocks.{j}"
            if i == 0:
                _conv_bn(sd, f"{p}.conv1", (4 * dim, dim, 1, 1), gen)
                _conv_bn(sd, f"{p}.conv2", (4 * dim, 1, 3, 3), gen)
                _conv_bn(sd, f"{p}.conv3", (dim, 4 * dim, 1, 1), gen)
            else:
                ws = window_sizes[i]
                sd[f"{p}.attn.attention_biases"] = torch.randn(num_heads[i], ws * ws, generator=gen)
                _norm(sd, f"{p}.attn.norm", dim, gen)
                _linear(sd, f"{p}.attn.qkv", 3 * dim, dim, gen)
                _linear(sd, f"{p}.attn.proj", dim, dim, gen)
                _norm(sd, f"{p}.mlp.norm", dim, gen)
                _linear(sd, f"{p}.mlp.fc1", 4 * dim, dim, gen)
                _linear(sd, f"{p}.mlp.fc2", dim, 4 * dim, gen)
                _conv_bn(sd, f"{p}.local_conv", (dim, 1, 3, 3), gen)
        if i + 1 < len(embed_dims):
            out = embed_dims[i + 1]
            p = f"layers.{i}.downsample"
            _conv_bn(sd, f"{p}.conv1", (out, dim, 1, 1), gen)
            _conv_bn(sd, f"{p}.conv2", (out, 1, 3, 3), gen)
            _conv_bn(sd, f"{p}.conv3", (out, out, 1, 1), gen)
    sd["neck.0.weight"] = torch.randn(out_chans, embed_dims[-1], 1, 1, generator=gen) / embed_dims[-1] ** 0.5
    _norm(sd, "neck.1", out_chans, gen)
    sd["neck.2.weight"] = torch.randn(out_chans, out_chans, 3, 3, generator=gen) / (9 * out_chans) ** 0.5
    _norm(sd, "neck.3", out_chans, gen)
    return {prefix + k: v for k, v in sd.items()}


# ------------------------------------------- an unfolded reference, written the plain way

# float32 keeps the reference fast (float64 convolutions take PyTorch's slow path); folding
# changes results by ~1e-6, far below the tolerance, while real mistakes give errors ~0.1-1.
REF_DTYPE = torch.float32


def _ref_conv_bn(x, sd, name, stride=1, groups=1):
    w = sd[f"{name}.c.weight"].to(REF_DTYPE)
    y = F.conv2d(x, w, None, stride=stride, padding=w.shape[-1] // 2, groups=groups)
    return F.batch_norm(
        y,
        sd[f"{name}.bn.running_mean"].to(REF_DTYPE),
        sd[f"{name}.bn.running_var"].to(REF_DTYPE),
        sd[f"{name}.bn.weight"].to(REF_DTYPE),
        sd[f"{name}.bn.bias"].to(REF_DTYPE),
        training=False,
        eps=1e-5,
    )


def _ref_layer_norm(x, sd, name, eps):
    return F.layer_norm(
        x, x.shape[-1:], sd[f"{name}.weight"].to(REF_DTYPE), sd[f"{name}.bias"].to(REF_DTYPE), eps
    )


def _ref_bias(sd, p, heads, ws):
    """(heads, N, N) bias, indexed by (|dy|, |dx|) the long way."""
    table = sd[f"{p}.attn.attention_biases"].to(REF_DTYPE)
    points = list(itertools.product(range(ws), range(ws)))
    index = [[abs(ya - yb) * ws + abs(xa - xb) for (yb, xb) in points] for (ya, xa) in points]
    bias = table[:, torch.tensor(index)]
    assert bias.shape == (heads, ws * ws, ws * ws)
    return bias


def _ref_attention(tokens, sd, p, heads, bias):
    """One window's attention, tokens (N, C), one head at a time."""
    n, c = tokens.shape
    hd = c // heads
    x = _ref_layer_norm(tokens, sd, f"{p}.attn.norm", 1e-5)
    qkv = x @ sd[f"{p}.attn.qkv.weight"].to(REF_DTYPE).T + sd[f"{p}.attn.qkv.bias"].to(REF_DTYPE)
    qkv = qkv.view(n, heads, 3 * hd)  # per head: q, k, v
    q, k, v = qkv[..., :hd], qkv[..., hd : 2 * hd], qkv[..., 2 * hd :]
    out = []
    for h in range(heads):
        scores = q[:, h] @ k[:, h].T * hd**-0.5 + bias[h]
        out.append(scores.softmax(-1) @ v[:, h])
    out = torch.cat(out, dim=-1)
    return out @ sd[f"{p}.attn.proj.weight"].to(REF_DTYPE).T + sd[f"{p}.attn.proj.bias"].to(REF_DTYPE)


def reference_forward(sd_full: dict, x: torch.Tensor, cfg: dict = SMALL) -> torch.Tensor:
    """Unfolded TinyViT forward (conv then BN), one window at a time."""
    sd = {k.removeprefix("image_encoder."): v for k, v in sd_full.items()}
    x = x.to(REF_DTYPE)
    x = F.gelu(_ref_conv_bn(x, sd, "patch_embed.seq.0"))
    x = _ref_conv_bn(x, sd, "patch_embed.seq.2")
    for i in range(len(cfg["embed_dims"])):
        for j in range(cfg["depths"][i]):
            p = f"layers.{i}.blocks.{j}"
            if i == 0:
                y = F.gelu(_ref_conv_bn(x, sd, f"{p}.conv1"))
                y = F.gelu(_ref_conv_bn(y, sd, f"{p}.conv2", groups=y.shape[1]))
                x = F.gelu(_ref_conv_bn(y, sd, f"{p}.conv3") + x)
            else:
                heads, ws = cfg["num_heads"][i], cfg["window_sizes"][i]
                bsz, c, h, w = x.shape
                hp, wp = -(-h // ws) * ws, -(-w // ws) * ws
                padded = torch.zeros(bsz, c, hp, wp, dtype=x.dtype)
                padded[:, :, :h, :w] = x
                upd = torch.zeros_like(padded)
                bias = _ref_bias(sd, p, heads, ws)
                for b in range(bsz):
                    for r0 in range(0, hp, ws):
                        for c0 in range(0, wp, ws):
                            win = padded[b, :, r0 : r0 + ws, c0 : c0 + ws]
                            tokens = win.reshape(c, ws * ws).T
                            out = _ref_attention(tokens, sd, p, heads, bias)
                            upd[b, :, r0 : r0 + ws, c0 : c0 + ws] = out.T.reshape(c, ws, ws)
                x = x + upd[:, :, :h, :w]
                x = _ref_conv_bn(x, sd, f"{p}.local_conv", groups=c)
                t = x.permute(0, 2, 3, 1)
                m = _ref_layer_norm(t, sd, f"{p}.mlp.norm", 1e-5)
                m = F.gelu(
                    m @ sd[f"{p}.mlp.fc1.weight"].to(REF_DTYPE).T + sd[f"{p}.mlp.fc1.bias"].to(REF_DTYPE)
                )
                m = m @ sd[f"{p}.mlp.fc2.weight"].to(REF_DTYPE).T + sd[f"{p}.mlp.fc2.bias"].to(REF_DTYPE)
                x = (t + m).permute(0, 3, 1, 2)
        if i + 1 < len(cfg["embed_dims"]):
            p = f"layers.{i}.downsample"
            stride = 2 if i + 1 <= 2 else 1
            x = F.gelu(_ref_conv_bn(x, sd, f"{p}.conv1"))
            x = F.gelu(_ref_conv_bn(x, sd, f"{p}.conv2", stride=stride, groups=x.shape[1]))
            x = _ref_conv_bn(x, sd, f"{p}.conv3")
    x = F.conv2d(x, sd["neck.0.weight"].to(REF_DTYPE))
    x = _ref_layer_norm(x.permute(0, 2, 3, 1), sd, "neck.1", 1e-6).permute(0, 3, 1, 2)
    x = F.conv2d(x, sd["neck.2.weight"].to(REF_DTYPE), padding=1)
    x = _ref_layer_norm(x.permute(0, 2, 3, 1), sd, "neck.3", 1e-6).permute(0, 3, 1, 2)
    return x


# ------------------------------------------------------------------------------- tests


def test_relative_position_index_is_abs_dy_times_window_plus_abs_dx():
    ws = 3
    idx = relative_position_index(ws)
    assert idx.shape == (9, 9)
    # position 1 = (0, 1), position 5 = (1, 2): |dy| = 1, |dx| = 1 -> 1 * 3 + 1
    assert idx[1, 5] == 4
    # position 6 = (2, 0), position 2 = (0, 2) -> 2 * 3 + 2
    assert idx[6, 2] == 8
    assert torch.equal(idx, idx.T)
    assert (idx.diagonal() == 0).all()


@pytest.fixture
def one_thread():
    """Many small ops: one thread is faster, and robust when other processes load the CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 64, 96), (1, 3, 72, 100)])
def test_folded_forward_matches_unfolded_reference(shape):
    sd = make_state_dict()
    model = TinyViT.from_state_dict(sd)
    assert not model.training
    x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got = model(x)
    want = reference_forward(sd, x)
    assert got.shape == (shape[0], SMALL["out_chans"], shape[2] // 4, shape[3] // 4)
    assert want.shape == got.shape
    torch.testing.assert_close(got.to(REF_DTYPE), want, atol=2e-4, rtol=1e-4)


def test_architecture_is_read_from_shapes():
    model = TinyViT.from_state_dict(make_state_dict())
    assert model.embed_dims == SMALL["embed_dims"]
    assert model.depths == SMALL["depths"]
    assert model.num_heads[1:] == SMALL["num_heads"][1:]
    assert model.window_sizes[1:] == SMALL["window_sizes"][1:]


def test_prefix_is_honoured_and_other_keys_ignored():
    sd = make_state_dict(prefix="encoder.")
    sd["mask_decoder.something"] = torch.zeros(3)
    model = TinyViT.from_state_dict(sd, prefix="encoder.")
    assert isinstance(model, TinyViT)


def test_missing_key_raises_value_error_naming_it():
    sd = make_state_dict()
    del sd["image_encoder.layers.2.blocks.1.attn.qkv.bias"]
    with pytest.raises(ValueError, match=r"image_encoder\.layers\.2\.blocks\.1\.attn\.qkv\.bias"):
        TinyViT.from_state_dict(sd)


def test_unexpected_key_raises_value_error_naming_it():
    sd = make_state_dict()
    sd["image_encoder.layers.1.blocks.0.attn.extra"] = torch.zeros(2)
    with pytest.raises(ValueError, match=r"image_encoder\.layers\.1\.blocks\.0\.attn\.extra"):
        TinyViT.from_state_dict(sd)


def test_renamed_key_raises_value_error():
    sd = make_state_dict()
    sd["image_encoder.neck.2.weightx"] = sd.pop("image_encoder.neck.2.weight")
    with pytest.raises(ValueError, match=r"image_encoder\.neck\.2\.weight"):
        TinyViT.from_state_dict(sd)


def test_wrong_shape_raises_value_error_naming_it():
    sd = make_state_dict()
    key = "image_encoder.layers.1.blocks.0.mlp.fc2.weight"
    sd[key] = sd[key][:, :-1]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        TinyViT.from_state_dict(sd)


def test_no_encoder_keys_raises_value_error():
    with pytest.raises(ValueError, match="image_encoder"):
        TinyViT.from_state_dict({"mask_decoder.x": torch.zeros(1)})


def test_bfloat16_module_runs_and_tracks_float32():
    sd = make_state_dict()
    model = TinyViT.from_state_dict(sd)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        want = model(x)
        got = model.to(torch.bfloat16)(x)
    assert got.dtype == torch.bfloat16
    cos = F.cosine_similarity(got.float().flatten(), want.flatten(), dim=0)
    assert cos > 0.99


# ------------------------------------------------------------------- the real checkpoint


@pytest.fixture(scope="module")
def lite_medsam_state_dict(lite_checkpoint):
    return torch.load(lite_checkpoint, map_location="cpu", weights_only=True)


def test_real_checkpoint_loads_strictly_and_encodes(lite_medsam_state_dict):
    model = TinyViT.from_state_dict(lite_medsam_state_dict)
    assert model.embed_dims == (64, 128, 160, 320)
    assert model.depths == (2, 2, 6, 2)
    assert model.num_heads[1:] == (4, 5, 10)
    assert model.window_sizes[1:] == (7, 14, 7)
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        y = model(x)
    assert y.shape == (1, 256, 64, 64)
    assert torch.isfinite(y).all()
    # the neck ends in a LayerNorm over channels: per-position statistics are set by its affine
    assert y.std() > 0.05


def test_real_checkpoint_bfloat16_tracks_float32(lite_medsam_state_dict):
    # a 64 x 64 input runs every code path (stripes, merges, padded windows) at 1/16 of the cost;
    # bfloat16 matrix products are slow on CPUs without native bfloat16
    model = TinyViT.from_state_dict(lite_medsam_state_dict)
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = model(x)
        got = model.to(torch.bfloat16)(x).float()
    cos = F.cosine_similarity(got.flatten(), want.flatten(), dim=0)
    assert cos > 0.99


@pytest.mark.usefixtures("one_thread")
def test_fused_onednn_calls_are_checked_and_the_plain_ops_run_where_they_disagree(monkeypatch, caplog):
    """The fused CPU path matches the unfolded reference; a oneDNN whose fused call is wrong is
    caught by the once-per-process check, and the plain ops give the same embedding."""
    from napari_medsam.models import onednn

    sd = make_state_dict()
    model = TinyViT.from_state_dict(sd)
    x = torch.rand((1, 3, 64, 96), generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(onednn, "_CHECKED", [])
    with torch.inference_mode():
        fused = model(x)
    assert onednn._CHECKED == [True]
    real = torch.ops.mkldnn._linear_pointwise

    class Wrong:  # a fused call that forgets its GELU
        binary = real.binary

        def __call__(self, x, w, b, attr, scalars, algorithm):
            return real(x, w, b, "none", [], "")

    monkeypatch.setattr(onednn, "_CHECKED", [])
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Wrong())
    with torch.inference_mode():
        plain = model(x)
    assert onednn._CHECKED == [False]
    assert "disagree" in caplog.text
    want = reference_forward(sd, x)
    torch.testing.assert_close(fused.to(REF_DTYPE), want, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(plain, fused, atol=2e-5, rtol=1e-5)

"""The embedding store: keys, atomic writes from several processes, pruning, and read-through."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from napari_medsam.base.windows import SOFT_TISSUE
from napari_medsam.cli import main
from napari_medsam.cli.store import byte_size
from napari_medsam.engine.cache import EmbeddingKey
from napari_medsam.engine.key_slice import volume_labels
from napari_medsam.engine.predictor import MedSamPredictor
from napari_medsam.engine.store import EmbeddingStore, store_volume
from napari_medsam.models.preprocessing import InputGeometry
from realdata import CT_SM as CT

LIVER_BOX = (43, 25, 106, 87)  # around the liver on slice 14 of example_ct_sm (x = column)
GEOMETRY = InputGeometry("lite-medsam", (101, 122), (212, 256), 256)
MODEL = SimpleNamespace(name="lite-medsam", family="lite-medsam", dtype=torch.float32, weights="ab" * 32)
OTHER = SimpleNamespace(name="other-model", family="sam", dtype=torch.bfloat16, weights="cd" * 32)


def identity(model) -> str:
    return f"{model.weights}|{model.family}|{str(model.dtype).removeprefix('torch.')}"


def key(data: str = "a" * 32, window=SOFT_TISSUE, model=MODEL, preprocessing: int = 1) -> EmbeddingKey:
    return EmbeddingKey(identity(model), data, window, preprocessing)


def embedding(seed: int) -> torch.Tensor:
    return torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(seed)).to(torch.float16)


def test_an_entry_comes_back_bit_identical_under_its_own_key_only(tmp_path):
    import zarr

    store = EmbeddingStore(tmp_path / "s.zarr")
    assert not store.path.exists()  # nothing is written before the first embedding
    stored = embedding(0)
    assert store.put(key(), stored, GEOMETRY, MODEL)
    found, geometry = store.get(key())
    assert torch.equal(found, stored)
    assert geometry == GEOMETRY
    others = [
        key(data="b" * 32), key(window=(-160.0, 240.5)), key(window=None),
        key(model=OTHER), key(model=replace_weights(MODEL, "ef" * 32)), key(preprocessing=2),
    ]  # fmt: skip
    for other in others:
        assert other not in store
        assert store.get(other) is None
    assert not store.put(key(), embedding(1), GEOMETRY, MODEL)  # the first write stays
    assert torch.equal(EmbeddingStore(store.path).get(key())[0], stored)  # another process sees it
    array = zarr.open_array(store.entry_path(key()), mode="r")
    assert (array.metadata.zarr_format, array.dtype, array.chunks) == (3, np.float16, array.shape)
    assert array.compressors  # one compressed chunk
    assert zarr.open_group(store.path, mode="r").attrs["napari-medsam-embeddings"] == 1


def replace_weights(model, weights: str) -> SimpleNamespace:
    return SimpleNamespace(**{**vars(model), "weights": weights})


def test_a_folder_that_is_not_a_store_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a store")
    with pytest.raises(ValueError, match="not a napari-medsam embedding store"):
        EmbeddingStore(tmp_path)
    EmbeddingStore(tmp_path / "empty").put(key(), embedding(0), GEOMETRY, MODEL)  # a new folder is fine


def test_a_foreign_or_damaged_entry_is_never_used(tmp_path):
    store = EmbeddingStore(tmp_path / "s.zarr")
    store.put(key(), embedding(0), GEOMETRY, MODEL)
    foreign = key(data="b" * 32)
    store.entry_path(foreign).parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(store.entry_path(key()), store.entry_path(foreign))  # another slice's embedding
    assert store.get(foreign) is None
    assert foreign not in store  # removed, so the right one can be written
    chunk = next(p for p in store.entry_path(key()).rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
    assert store.get(key()) is None
    assert key() not in store  # removed, so it is written again
    assert store.put(key(), embedding(2), GEOMETRY, MODEL)
    assert torch.equal(store.get(key())[0], embedding(2))


def write_entries(path: str, worker: int, barrier) -> list[bool]:
    """In a child process: two slices every worker writes, and two of its own."""
    store = EmbeddingStore(path)
    barrier.wait()
    shared = [store.put(key(data=f"{j:032x}"), embedding(j), GEOMETRY, MODEL) for j in range(2)]
    own = [
        store.put(key(data=f"{worker:02x}{j:030x}"), embedding(10 * worker + j), GEOMETRY, MODEL)
        for j in range(2)
    ]
    return shared + own


def test_several_processes_write_one_store(tmp_path):
    path = tmp_path / "s.zarr"
    context = multiprocessing.get_context("forkserver")  # fresh processes, torch imported once
    context.set_forkserver_preload(["torch", "zarr", "napari_medsam.engine.store"])
    with context.Manager() as manager, ProcessPoolExecutor(2, mp_context=context) as pool:
        barrier = manager.Barrier(2)
        written = list(pool.map(write_entries, [str(path)] * 2, [1, 2], [barrier] * 2))
    assert [sum(w[j] for w in written) for j in range(2)] == [1, 1]  # a shared slice is written once
    assert all(w[2:] == [True, True] for w in written)
    store = EmbeddingStore(path)
    assert len(store.entries()) == 6
    expected = {f"{j:032x}": j for j in range(2)} | {
        f"{w:02x}{j:030x}": 10 * w + j for w in (1, 2) for j in range(2)
    }
    for data, seed in expected.items():
        assert torch.equal(store.get(key(data=data))[0], embedding(seed))
    assert not [p for p in path.rglob("*") if p.name.endswith(".partial")]


def filled_store(path: Path) -> EmbeddingStore:
    """Three slices of a.nii.gz and one of b.nii.gz (lite-medsam), two of another model."""
    store = EmbeddingStore(path)
    with store_volume("a.nii.gz"):
        for j in range(3):
            store.put(key(data=f"a{j}".ljust(32, "0")), embedding(j), GEOMETRY, MODEL)
    with store_volume("b.nii.gz"):
        store.put(key(data="b" * 32), embedding(3), GEOMETRY, MODEL)
    for j in range(2):
        store.put(key(data=f"c{j}".ljust(32, "0"), model=OTHER), embedding(4 + j), GEOMETRY, OTHER)
    for age, entry in enumerate(sorted(store.entries(), key=lambda e: e.path.name)):
        os.utime(entry.path / "zarr.json", (1e9 + age, 1e9 + age))  # a0 oldest ... c1 newest
    return store


def test_usage_per_model_and_volume_and_pruning_least_recently_used_first(tmp_path):
    store = filled_store(tmp_path / "s.zarr")
    usage = {(u.model.name, u.volume): u.entries for u in store.usage()}
    assert usage == {("lite-medsam", "a.nii.gz"): 3, ("lite-medsam", "b.nii.gz"): 1, ("other-model", None): 2}
    sizes = {e.path.name[:2]: e.nbytes for e in store.entries()}
    store.get(key(data="a0".ljust(32, "0")))  # the oldest is used now
    kept = sizes["a0"] + sizes["c0"] + sizes["c1"]
    assert store.prune(max_bytes=kept) == (3, sizes["a1"] + sizes["a2"] + sizes["bb"])
    assert sorted(e.path.name[:2] for e in store.entries()) == ["a0", "c0", "c1"]
    assert store.prune(model="cdcdcd") == (2, sizes["c0"] + sizes["c1"])  # by weights digest
    assert store.prune(model="lite-medsam") == (1, sizes["a0"])
    assert store.entries() == []


def test_store_command_reports_and_prunes(tmp_path, capsys):
    store = filled_store(tmp_path / "s.zarr")
    assert main(["store", str(store.path)]) == 0
    out = capsys.readouterr().out
    assert "6 embedding(s)" in out
    assert "lite-medsam (lite-medsam, float32, preprocessing 1, weights abababababab): 4 slice(s)" in out
    assert "a.nii.gz: 3 slice(s)" in out
    assert "other-model (sam, bfloat16, preprocessing 1, weights cdcdcdcdcdcd): 2 slice(s)" in out
    assert main(["store", str(store.path), "--model", "other-model"]) == 0
    assert "removed 2 embedding(s)" in capsys.readouterr().out
    newest = sorted(store.entries(), key=lambda e: e.used)[-2:]
    assert main(["store", str(store.path), "--prune-to", str(sum(e.nbytes for e in newest))]) == 0
    assert sorted(e.path for e in store.entries()) == sorted(e.path for e in newest)
    assert main(["store", str(tmp_path / "missing.zarr")]) == 1
    assert "no embedding store" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "size"), [("500M", 500 << 20), ("2G", 2 << 30), ("1.5k", 1536), ("123", 123), ("4MiB", 4 << 20)]
)
def test_sizes_read_as_powers_of_1024(text, size):
    assert byte_size(text) == size


def test_the_weights_digest_follows_the_file_contents_not_its_path(tmp_path, lite_checkpoint, tiny_sam_dir):
    from napari_medsam.models.loading import source_digest
    from napari_medsam.models.weights import LITE_MEDSAM_SHA256

    copy = tmp_path / "elsewhere" / "weights.pth"
    copy.parent.mkdir()
    shutil.copy(lite_checkpoint, copy)
    assert source_digest(copy) == source_digest("lite-medsam") == LITE_MEDSAM_SHA256
    with copy.open("r+b") as file:
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 1]))
    assert source_digest(copy) != LITE_MEDSAM_SHA256
    folder = shutil.copytree(tiny_sam_dir, tmp_path / "tiny-copy")
    assert source_digest(folder) == source_digest(tiny_sam_dir)


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts its calls."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder, self.calls = encoder, 0

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.encoder(pixels)


@pytest.mark.slow
def test_a_second_run_reads_the_store_and_gives_the_same_masks(tmp_path, lite_predictor_model, tiny_sam_dir):
    from napari_medsam.io.files import read_image
    from napari_medsam.models.loading import load_model

    volume = read_image(CT)[0][13:16]
    spy = CountingEncoder(lite_predictor_model.encoder)
    model = replace(lite_predictor_model, encoder=spy)
    assert model.weights  # the identity is the weights' digest
    path = tmp_path / "s.zarr"
    first = volume_labels(
        MedSamPredictor(model, store=path), volume, 1, [LIVER_BOX], SOFT_TISSUE, propagate=True
    )
    assert spy.calls == 3
    assert first[1].sum() > 500
    again = MedSamPredictor(model, store=path)  # a new session: empty memory cache
    second = volume_labels(again, volume, 1, [LIVER_BOX], SOFT_TISSUE, propagate=True)
    assert spy.calls == 3  # no encoder run
    np.testing.assert_array_equal(second, first)
    assert again.is_cached(volume[0], SOFT_TISSUE)
    assert again.precompute(volume[0], window=(-100.0, 200.0))  # another window: encoded
    assert spy.calls == 4
    tiny = load_model(tiny_sam_dir, device="cpu", dtype="float32")
    tiny_spy = CountingEncoder(tiny.encoder)
    assert MedSamPredictor(replace(tiny, encoder=tiny_spy), store=path).precompute(volume[0], SOFT_TISSUE)
    assert tiny_spy.calls == 1  # another model: encoded, not lite-medsam's embedding
    assert {(u.model.name, u.entries) for u in EmbeddingStore(path).usage()} == {
        ("lite-medsam", 4), (str(tiny_sam_dir), 1),
    }  # fmt: skip


def test_the_cli_starts_without_the_cluster_extra_and_names_it_when_needed():
    from napari_medsam.base.errors import MissingExtraError, import_extra

    code = (
        "import sys\nfrom napari_medsam.cli import build_parser\nbuild_parser()\n"
        "from napari_medsam._qt import store_setting\n"
        "loaded = [m for m in ('dask', 'distributed', 'zarr') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    with pytest.raises(
        MissingExtraError,
        match=r"the embedding store needs no_such_zarr: pip install 'napari-medsam\[cluster\]'",
    ):
        import_extra("no_such_zarr", "the embedding store")

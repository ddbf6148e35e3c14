"""Scaling out: embedding slices/s and batch volumes/hour on 1 and 2 workers; store read vs encoder.

    python benchmarks/bench_scale.py                          # LiteMedSAM, 1 and 2 workers
    python benchmarks/bench_scale.py --workers 1 2 4 --volumes 4 --slices 16 --device cuda

The cohort is made of copies of the package's CT sample (TotalSegmentator's ``example_ct_sm``),
cut to ``--slices`` slices; copy ``i`` is shifted by ``i`` HU so that no two copies share a store
entry (the same anatomy, so the same work). Each worker count gets a local cluster of its own
(one task thread per worker, torch threads = cores // workers), warmed up (the model loaded on
every worker) before the clock starts; each timed run writes to a fresh store.

- embed: ``napari-medsam embed`` of every slice of every copy, through ``--scheduler``.
- batch: ``napari-medsam batch`` of one liver row per copy, propagated through its slices,
  without a store (every slice is encoded).
- per slice, in this process: the encoder, a store read, a store write, one box through the
  decoder (medians).

Scaling efficiency is rate(N workers) / (N x rate(1 worker)). On a machine shared with other
work the absolute numbers move with its load: compare the rows of one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning

from napari_medsam.base.windows import SOFT_TISSUE
from napari_medsam.cli import main as cli
from napari_medsam.cli.cluster import open_client
from napari_medsam.io.samples import ABDOMINAL_CT

CT = ABDOMINAL_CT
KEY_SLICE, LIVER_BOX = 14, (43, 25, 106, 87)  # of the full CT; the cuts are centred on it


COLUMNS = ("workers", "embed slices/s", "efficiency", "batch volumes/h", "efficiency")


def table_row(cells: tuple[object, ...]) -> str:
    return "  ".join(f"{cell!s:>{len(title)}}" for cell, title in zip(cells, COLUMNS, strict=True))


def write_cohort(folder: Path, volumes: int, slices: int) -> list[Path]:
    """``volumes`` copies of the CT cut to ``slices`` slices around the liver's key slice."""
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(CT))
    start = max(0, KEY_SLICE - slices // 2)
    cut = ct[:, :, start : start + slices]
    paths = []
    for i in range(volumes):
        path = folder / f"ct{i:02d}.nii.gz"
        sitk.WriteImage(sitk.Cast(cut, sitk.sitkInt16) + i, str(path))
        paths.append(path)
    manifest = ["image,slice,box,name"] + [
        f"{p.name},{KEY_SLICE - start},{' '.join(map(str, LIVER_BOX))},liver" for p in paths
    ]
    (folder / "manifest.csv").write_text("\n".join(manifest) + "\n")
    return paths


def warm_up(model: str, device: str, dtype: str) -> None:
    """On a worker: load the model into the process's registry (the predictor then reuses it)."""
    from napari_medsam.models.loading import load_model

    load_model(model, device=device, dtype=dtype)


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    code = cli(argv)
    if code != 0:
        raise SystemExit(f"{argv[0]} exited {code}")
    return time.perf_counter() - start


def scaling(args: argparse.Namespace, folder: Path, paths: list[Path]) -> list[tuple[int, float, float]]:
    """(workers, embedded slices/s, batch volumes/hour) per worker count."""
    options = ["--model", args.model, "--device", args.device, "--dtype", args.dtype]
    rows = []
    for workers in args.workers:
        with open_client(argparse.Namespace(workers=workers, scheduler=None)) as client:
            client.run(warm_up, args.model, args.device, args.dtype)
            where = ["--scheduler", client.scheduler.address, *options]
            store = tempfile.mkdtemp(dir=folder, suffix=".zarr")
            seconds = timed(["embed", *map(str, paths), "--store", store, *where])
            slices_per_s = len(paths) * args.slices / seconds
            out = tempfile.mkdtemp(dir=folder)
            seconds = timed(["batch", str(folder / "manifest.csv"), "-o", out, *where])
            rows.append((workers, slices_per_s, len(paths) / seconds * 3600))
    return rows


def per_slice(args: argparse.Namespace, folder: Path, repeats: int) -> dict[str, float]:
    """Medians in seconds of ``set_image`` on a new slice without and with a store, on a store hit
    (empty memory cache), and of one box through the decoder."""
    from napari_medsam.engine.cache import EmbeddingCache
    from napari_medsam.engine.predictor import MedSamPredictor
    from napari_medsam.io.files import read_image

    volume = read_image(CT)[0]
    plain = MedSamPredictor.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    writer = MedSamPredictor(plain.model, store=folder / "per-slice.zarr")
    reader = MedSamPredictor(plain.model, cache=EmbeddingCache(0), store=writer.store)
    steps = {
        "encoder": lambda plane: plain.set_image(plane, SOFT_TISSUE),
        "encoder + store write": lambda plane: writer.set_image(plane, SOFT_TISSUE),
        "store read": lambda plane: reader.set_image(plane, SOFT_TISSUE),
        "decoder (one box)": lambda plane: reader.predict(box=LIVER_BOX),
    }
    plain.precompute(volume[0] - 1, SOFT_TISSUE)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steps}
    for z in range(repeats):
        plane = volume[z % len(volume)] - 2 - z // len(volume)  # not in any cache yet
        for name, step in steps.items():
            start = time.perf_counter()
            step(plane)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--volumes", type=int, default=4, help="copies of the CT (default 4)")
    parser.add_argument("--slices", type=int, default=8, help="slices per copy (default 8)")
    parser.add_argument("--repeats", type=int, default=7, help="slices timed one by one (default 7)")
    parser.add_argument("--model", default="lite-medsam")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args(argv)
    print(f"{sys.platform}, {os.cpu_count()} cores, model {args.model} on {args.device}, dtype {args.dtype}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_cohort(folder, args.volumes, args.slices)
        rows = scaling(args, folder, paths)
        costs = per_slice(args, folder, args.repeats)
    one = rows[0] if rows and rows[0][0] == 1 else None
    print(f"\ncohort: {args.volumes} volumes x {args.slices} slices (122 x 101 voxels each)")
    print(table_row(COLUMNS))
    for workers, slices_per_s, volumes_per_h in rows:
        embed_efficiency = "" if one is None else f"{slices_per_s / (workers * one[1]):.0%}"
        batch_efficiency = "" if one is None else f"{volumes_per_h / (workers * one[2]):.0%}"
        print(
            table_row(
                (workers, f"{slices_per_s:.2f}", embed_efficiency, f"{volumes_per_h:.0f}", batch_efficiency)
            )
        )
    print(f"\nper slice, in one process ({args.repeats} slices, medians)")
    for name, seconds in costs.items():
        print(f"{name:>22}  {seconds * 1000:9.1f} ms")
    print(f"{'encoder / read':>22}  {costs['encoder'] / costs['store read']:9.0f} x")


if __name__ == "__main__":
    main()

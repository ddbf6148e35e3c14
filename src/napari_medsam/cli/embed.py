"""``napari-medsam embed``: fill an embedding store with every slice of a cohort, on dask.distributed.

Each volume is read once, by a worker, with the window ``segment`` would choose (same defaults,
so later runs meet in the store); then one task per slice encodes it unless the store holds it.
The volume moves between workers as dask data, not by reading the file again.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_medsam.cli.common import add_cohort_options, fetch_model, window_for, window_options

ENCODED, STORED = "encoded", "stored"


def slice_range(text: str) -> slice:
    """An argparse type: ``A:B`` with Python's slice semantics (B exclusive, either may be left out)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        return slice(*(int(part) if part.strip() else None for part in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected A:B (Python slice, B exclusive), got {text!r}") from None


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``embed`` subcommand."""
    embed = commands.add_parser(
        "embed", help="encode every slice of volumes into an embedding store, on a dask cluster"
    )
    embed.add_argument("volumes", nargs="+", metavar="VOLUME", help="volume file or DICOM series folder")
    embed.add_argument("--store", required=True, help="embedding store (.zarr), created if missing")
    embed.add_argument(
        "--slices",
        type=slice_range,
        default=slice(None),
        metavar="A:B",
        help="slices on axis 0 (default all)",
    )
    add_cohort_options(embed)
    embed.set_defaults(func=run_embed)


@dataclass(frozen=True)
class VolumeInput:
    """A volume read on a worker, with its window and its name in the store's report."""

    name: str
    array: np.ndarray
    window: tuple[float, float] | None


def read_volume_input(name: str, path: str, options: argparse.Namespace) -> VolumeInput:
    """Task: read one volume and choose its window as ``segment`` does."""
    from napari_medsam.io.files import read_image

    array, geometry = read_image(Path(path))
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{name}: expected a 3D volume, got shape {array.shape}")
    return VolumeInput(name, array, window_for(options, array, geometry).window)


def slice_indices(volume: VolumeInput, slices: slice) -> list[int]:
    """Task: the slice indices of ``volume`` to embed."""
    return list(range(volume.array.shape[0])[slices])


def embed_slice(plugin: str, volume: VolumeInput, index: int) -> str:
    """Task: encode one slice into the store, unless it is there (whole) already."""
    from napari_medsam.base.pixels import check_finite_slices
    from napari_medsam.cli.cluster import worker_predictor
    from napari_medsam.engine.store import store_volume

    check_finite_slices(volume.array, 0, [index])
    predictor = worker_predictor(plugin)
    with store_volume(volume.name):
        encoded = predictor.precompute(volume.array[index], volume.window)
    return ENCODED if encoded else STORED


@dataclass
class VolumeProgress:
    """What became of one volume's slices."""

    encoded: int = 0
    stored: int = 0
    remaining: int = 0
    error: str | None = None


def run_embed(args: argparse.Namespace) -> int:
    """Embed every selected slice of every volume; exit 1 if a volume could not be read."""
    from tqdm import tqdm

    from napari_medsam.cli import cluster
    from napari_medsam.engine.store import EmbeddingStore

    store = EmbeddingStore(args.store)  # refused before any worker starts if it is not a store
    # No memory cache on the workers: every embedding goes to the store and is not used again there.
    spec = cluster.PredictorSpec(
        args.model, args.device, args.dtype, str(store.path), cache_bytes=0, backend=args.backend
    )
    options = window_options(args)
    paths = list(dict.fromkeys(args.volumes))
    report = {path: VolumeProgress() for path in paths}
    fetch_model(args)  # the workers on this machine then find the weights
    start = time.perf_counter()
    with (
        cluster.open_client(args) as client,
        cluster.predictors(client, spec) as plugin,
        tqdm(total=0, unit="slice", desc="embed") as progress,
    ):
        prefix = cluster.task_key("embed")
        pending = cluster.distributed.as_completed()
        volumes, slice_lists, owners = {}, {}, {}
        for i, path in enumerate(paths):
            where = str(Path(path).absolute())  # the workers' working folder may be another
            volumes[path] = client.submit(read_volume_input, path, where, options, key=f"{prefix}-read-{i}")
            indices = client.submit(slice_indices, volumes[path], args.slices, key=f"{prefix}-slices-{i}")
            slice_lists[indices.key] = owners[indices.key] = path
            pending.add(indices)
        for future in pending:
            path = owners.pop(future.key)
            state = report[path]
            try:
                result = future.result()
            except Exception as error:  # an unreadable volume, or a slice that failed
                state.error = state.error or cluster.one_line(error)
                result = [] if future.key in slice_lists else None
            if future.key in slice_lists:  # the volume's slice indices: one task each
                state.remaining = len(result)
                progress.total += len(result)
                progress.refresh()
                for z in result:
                    task = client.submit(embed_slice, plugin, volumes[path], z, key=f"{future.key}-{z}")
                    owners[task.key] = path
                    pending.add(task)
            else:
                state.encoded += result == ENCODED
                state.stored += result == STORED
                state.remaining -= 1
                progress.update()
            if state.remaining == 0:
                volumes.pop(path, None)  # its slices are done: the workers may drop the array
    elapsed = time.perf_counter() - start
    for path, state in report.items():
        line = f"{path}: {state.encoded} encoded, {state.stored} already in the store"
        print(line + (f"; error: {state.error}" if state.error else ""))
    encoded = sum(state.encoded for state in report.values())
    rate = encoded / max(elapsed, 1e-9)
    print(f"{store.path}: {encoded} slices encoded in {elapsed:.1f} s ({rate:.2f} slices/s)")
    failed = [path for path, state in report.items() if state.error]
    if failed:
        print(f"napari-medsam: error: {len(failed)} volume(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0

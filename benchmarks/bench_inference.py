"""Where napari-medsam's time goes: one table per model family, beside the plain way, in one run.

    python benchmarks/bench_inference.py                  # LiteMedSAM and MedSAM ViT-B
    python benchmarks/bench_inference.py --family lite-medsam --repeats 9

Each row times napari-medsam (``MedSamPredictor`` with its defaults: fast ViT encoder, fast mask
decoder, float16 embedding cache, ``dtype="auto"``) and the baseline (our preprocessing and
post-processing around transformers' ``SamModel`` in float32 with default settings, no cache;
LiteMedSAM's baseline encoder is TinyViT written as the original code is: see ``baselines.py``),
interleaved in the same run: median over repeats after a warm-up, and the ratio of the medians.

- MedSAM ViT-B uses random weights of the real architecture (``SamConfig()`` defaults; weights
  do not change the work done); LiteMedSAM uses its real bundled weights.
- Slices are 512 x 512 CT-like phantoms (``napari_medsam.core.phantoms``), masks come out at 512 x 512.
- Peak memory: the largest RSS rise during one embedding, sampled every 2 ms, each in a fresh
  process (a warm process reuses memory it freed earlier).
- On a busy machine set ``OMP_WAIT_POLICY=PASSIVE``: PyTorch's two OpenMP threads otherwise spin
  at every small operation's barrier while the other is descheduled (decoder medians 5-10x worse).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for the hub here

import numpy as np
import torch

from napari_medsam import MedSamPredictor
from napari_medsam.core.devices import cpu_has_native_bfloat16, resolve_dtype
from napari_medsam.core.jobs import run_to_end
from napari_medsam.core.phantoms import ct_phantom_slice, ct_phantom_volume
from napari_medsam.core.propagation import propagate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines import PlainPredictor, PlainTinyViT, SamGetImageEmbeddings

WINDOW = (-160.0, 240.0)
SIDE = 512
TARGETS = {
    "embed_ratio": 0.45,  # ViT-B embedding, ratio to the baseline
    "lite_embed_s": 0.4,
    "box_ms": 20.0,
    "slice_mb": 2.1,
}


# ------------------------------------------------------------------------------ measuring


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Wall times of each function, run in turn within every repeat (so load hits them alike)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss(fn: Callable[[], object]) -> float | None:
    """Peak RSS above the starting RSS while ``fn`` runs, in MB (None where /proc is missing)."""
    try:
        start = _rss()
    except OSError:
        return None
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        fn()
    finally:
        done.set()
        sampler.join()
    return (max(peak[0], _rss()) - start) / 1e6


class Table:
    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str, str, str]] = []

    def add(
        self, measure: str, ours: float, base: float, unit: str, fmt: str = "{:.3g}", target: str = ""
    ) -> None:
        ratio = f"{ours / base:.2f}x" if base else "n/a"
        self.rows.append((measure, f"{fmt.format(ours)} {unit}", f"{fmt.format(base)} {unit}", ratio, target))

    def print(self) -> None:
        header = ("measure", "napari-medsam", "baseline", "ratio", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        print(f"\n### {self.title}\n")
        for i, row in enumerate([header, *self.rows]):
            print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
            if i == 0:
                print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        sys.stdout.flush()


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------ one family


def bench_family(
    title: str,
    fast: MedSamPredictor,
    plain: PlainPredictor,
    args: argparse.Namespace,
    embed_repeats: int,
    slices: int,
) -> None:
    """Measure one family and print its table."""
    image, _, box = ct_phantom_slice(SIDE, SIDE, seed=0)
    table = Table(title)
    family = fast.family

    # slice embedding: set_image on a slice not in the cache (preprocessing + encoder + storage)
    def fast_miss() -> None:
        fast.cache.clear()
        fast.set_image(image, window=WINDOW)

    def plain_set() -> None:
        plain.set_image(image, window=WINDOW)

    t = interleaved({"fast": fast_miss, "plain": plain_set}, embed_repeats, args.warmup)
    embed_fast, embed_plain = median(t["fast"]), median(t["plain"])
    target = f"<= {TARGETS['lite_embed_s']} s" if family == "lite-medsam" else f"<= {TARGETS['embed_ratio']}x"
    table.add("slice embedding (set_image, not cached)", embed_fast, embed_plain, "s", target=target)

    # box -> mask on the current slice (embedding cached), 512 x 512 mask out
    fast.set_image(image, window=WINDOW)
    plain.set_image(image, window=WINDOW)
    t = interleaved(
        {"fast": lambda: fast.predict(box=box), "plain": lambda: plain.predict(box=box)},
        args.prompt_repeats,
        3,
    )
    table.add(
        "box -> mask, cached embedding",
        1e3 * median(t["fast"]),
        1e3 * median(t["plain"]),
        "ms",
        target=f"<= {TARGETS['box_ms']:g} ms",
    )
    agreement = _iou(fast.predict(box=box).mask, plain.predict(box=box).mask)

    # ten boxes on one slice: one at a time (ours) vs one batched call (transformers)
    boxes = [(box[0] + d, box[1] + d, box[2] - d, box[3] - d) for d in range(0, 20, 2)]
    t = interleaved(
        {"fast": lambda: [fast.predict(box=b) for b in boxes], "plain": lambda: plain.predict_boxes(boxes)},
        max(3, args.prompt_repeats // 5),
        1,
    )
    table.add("10 boxes: one at a time vs batched", 1e3 * median(t["fast"]), 1e3 * median(t["plain"]), "ms")

    # set_image on a cached slice; the baseline has no cache and encodes again
    t = interleaved({"fast": lambda: fast.set_image(image, window=WINDOW)}, args.prompt_repeats, 3)
    table.add(
        "set_image, cached slice (baseline re-encodes)", 1e3 * median(t["fast"]), 1e3 * embed_plain, "ms"
    )

    # peak memory of one embedding, each in a fresh process
    fast_peak = fresh_peak(args, family, "fast")
    plain_peak = fresh_peak(args, family, "plain")
    if fast_peak is not None and plain_peak is not None:
        table.add("peak memory of one embedding (RSS rise)", fast_peak, plain_peak, "MB", fmt="{:.0f}")

    # bytes per cached slice
    fast.cache.clear()
    fast.set_image(image, window=WINDOW)
    per_slice = fast.cache.nbytes / max(1, len(fast.cache)) / 1e6
    assert plain.embedding is not None
    plain_bytes = plain.embedding.element_size() * plain.embedding.nelement() / 1e6
    table.add(
        "bytes per cached slice",
        per_slice,
        plain_bytes,
        "MB",
        fmt="{:.2f}",
        target=f"<= {TARGETS['slice_mb']} MB",
    )

    # propagation through a volume, empty cache: slices per second
    if slices > 1:
        volume, organ = ct_phantom_volume(depth=slices, height=SIDE, width=SIDE, seed=1)
        key = slices // 2
        ys, xs = np.nonzero(organ[key])
        key_box = (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))

        def run(predictor: object) -> float:
            if hasattr(predictor, "cache"):
                predictor.cache.clear()  # type: ignore[attr-defined]
            steps: list[object] = []
            start = time.perf_counter()
            run_to_end(propagate(predictor, volume, key, key_box=key_box, window=WINDOW), steps.append)  # type: ignore[arg-type]
            return len(steps) / (time.perf_counter() - start)

        rates_fast, rates_plain = [], []
        for _ in range(args.propagation_repeats):
            rates_fast.append(run(fast))
            rates_plain.append(run(plain))
        table.add(
            f"propagation, {slices}-slice volume (slices/s)", median(rates_fast), median(rates_plain), "/s"
        )
    table.print()
    print(f"\nmask IoU napari-medsam vs baseline on the benchmark box: {agreement:.4f}")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


# ------------------------------------------------------------------------------ families


def lite_medsam(args: argparse.Namespace) -> tuple[str, MedSamPredictor, PlainPredictor]:
    """napari-medsam's LiteMedSAM and the plain way, both on the real bundled weights."""
    from napari_medsam.models.lite_medsam import bundled_checkpoint_path
    from napari_medsam.models.loading import load_model

    model = load_model("lite-medsam", device="cpu", dtype=args.dtype)
    plain_model = load_model("lite-medsam", device="cpu", dtype="float32")
    state = torch.load(bundled_checkpoint_path(), map_location="cpu", weights_only=True)
    plain = PlainPredictor("lite-medsam", plain_model.sam, PlainTinyViT(state))
    return f"LiteMedSAM, {model.dtype} (real weights)", MedSamPredictor(model), plain


def medsam_vit_b(args: argparse.Namespace) -> tuple[str, MedSamPredictor, PlainPredictor]:
    """MedSAM ViT-B with random weights of the real architecture, ours and the plain way."""
    from transformers import SamConfig, SamModel

    from napari_medsam.models import LoadedModel
    from napari_medsam.models.fast_vit import SamImageEncoder

    torch.manual_seed(0)
    sam = SamModel(SamConfig()).eval().requires_grad_(False)  # SamConfig() defaults are ViT-B
    with torch.no_grad():  # non-trivial random weights (SAM's default init is ~1e-10)
        for name, param in sam.named_parameters():
            if param.ndim > 1 and "layer_norm" not in name:
                param.normal_(0.0, 0.02)
    device = torch.device("cpu")
    dtype = resolve_dtype(args.dtype, device)
    fast_sam = sam if dtype == torch.float32 else copy.deepcopy(sam).to(dtype)
    model = LoadedModel("medsam", fast_sam, SamImageEncoder(fast_sam), "vit-b-random", device, dtype)
    plain = PlainPredictor("medsam", sam, SamGetImageEmbeddings(sam))
    title = f"MedSAM ViT-B, {dtype} (RANDOM weights of the real architecture: timing only)"
    return title, MedSamPredictor(model), plain


FAMILIES = {"lite-medsam": lite_medsam, "medsam": medsam_vit_b}


def child_peak(args: argparse.Namespace) -> None:
    """In a fresh process: the RSS rise during one embedding by ``args.peak_child`` (family, which)."""
    family, which = args.peak_child
    _, fast, plain = FAMILIES[family](args)
    image, _, _ = ct_phantom_slice(SIDE, SIDE, seed=0)
    predictor = fast if which == "fast" else plain
    print(peak_rss(lambda: predictor.set_image(image, window=WINDOW)))


def fresh_peak(args: argparse.Namespace, family: str, which: str) -> float | None:
    """Peak memory of one embedding measured in a fresh process (no memory kept from earlier runs)."""
    script = os.path.abspath(__file__)
    command = [sys.executable, script, "--peak-child", family, which, "--dtype", args.dtype]
    if args.threads:
        command += ["--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"peak-memory child failed: {done.stderr[-500:]}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", choices=["all", "lite-medsam", "medsam"], default="all")
    parser.add_argument(
        "--dtype", nargs="+", default=["auto", "float32"],
        help="napari-medsam's dtypes, one table each (default: the default and float32; baseline: float32)",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=7, help="LiteMedSAM embedding repeats")
    parser.add_argument("--vit-repeats", type=int, default=3, help="ViT-B embedding repeats")
    parser.add_argument("--prompt-repeats", type=int, default=30, help="box -> mask repeats")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lite-slices", type=int, default=12, help="propagation volume depth (0: skip)")
    parser.add_argument("--vit-slices", type=int, default=3, help="propagation volume depth (0: skip)")
    parser.add_argument("--propagation-repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--peak-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        child_peak(args)
        return

    import transformers

    cpu = torch.device("cpu")
    dtypes = {str(resolve_dtype(d, cpu)): d for d in reversed(args.dtype)}  # one table per real dtype
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("n/a",)
    print(
        f"napari-medsam inference benchmark: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}\n"
        f"native bfloat16 matrix units: {cpu_has_native_bfloat16()}; dtypes "
        f"{', '.join(f'{d!r} -> {resolve_dtype(d, cpu)}' for d in args.dtype)}; "
        f"load average at start {load}\n"
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; "
        "times are medians over repeats after a warm-up, napari-medsam and baseline interleaved"
    )
    for dtype in reversed(list(dtypes.values())):
        args.dtype = dtype
        print(f"\n## dtype {dtype!r} ({resolve_dtype(dtype, cpu)})")
        for family, setup in FAMILIES.items():
            if args.family in ("all", family):
                title, fast, plain = setup(args)
                slices = args.lite_slices if family == "lite-medsam" else args.vit_slices
                repeats = args.repeats if family == "lite-medsam" else args.vit_repeats
                bench_family(title, fast, plain, args, repeats, slices)


if __name__ == "__main__":
    main()

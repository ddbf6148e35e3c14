"""Where napari-medsam's time goes: one table per model family, beside the plain way, in one run.

    python benchmarks/bench_inference.py                  # encoder backends (torch / ONNX Runtime)
    python benchmarks/bench_inference.py --section families --family lite-medsam --repeats 9

``--section backends`` (the default) compares the encoder backends and dtypes of LiteMedSAM (real
weights) and MedSAM ViT-B (random weights, timing only) in one run: embedding and decoder ms,
propagation slices/s through one liver of the shipped CT, cold start (load + first mask, each in a
fresh process; ONNX Runtime with an empty and then a warm graph cache) with its peak RSS, and for
LiteMedSAM the fidelity guard: mask IoU against torch float32 for a box from the label on every
slice of every organ of the shared real CT (``/work/shared`` or ``--ct``/``--seg``).
``--section families`` is the per-family table beside the plain way (phantom slices).
``--section speed`` is where the time of a session goes (issues 27 and 33), from one run: the
machine's GEMM rates (a 2048^3 product: float32 through MKL and through oneDNN, bfloat16 through
oneDNN) beside LiteMedSAM's encoder per backend (GFLOP/s counted on the official float32 encoder,
and their ratio to the float32 and bfloat16 GEMM rates); propagation of the shared CT's liver
cold (per slice, against the official script's way: ``baselines.PlainTinyViT`` and transformers'
decoder) and warm (every slice encoded: slices/s, masks equal to the cold walk's); MedSAM ViT-B
(random weights) per backend against transformers' ``get_image_embeddings`` (``--skip-vit`` to
leave it out); and the widget in a fresh process: the viewer's event-loop delay (a 10 ms QTimer's
lateness: percentiles) from the widget's opening while the model loads and while every slice of
the shared CT encodes in the background, and the first Segment after the load on a slice not yet
encoded. It needs a display (``xvfb-run -a python benchmarks/bench_inference.py --section speed``).

Each row times napari-medsam (``MedSamPredictor`` with its defaults: fast ViT encoder, fast mask
decoder, float16 embedding cache, ``dtype="auto"``) and the baseline (our preprocessing and
post-processing around transformers' ``SamModel`` in float32 with default settings, no cache;
LiteMedSAM's baseline encoder is TinyViT written as the original code is: see ``baselines.py``),
interleaved in the same run: median over repeats after a warm-up, and the ratio of the medians.

- MedSAM ViT-B uses random weights of the real architecture (``SamConfig()`` defaults; weights
  do not change the work done); LiteMedSAM uses its real bundled weights.
- Slices are 512 x 512 CT-like phantoms (``napari_medsam.base.phantoms``), masks come out at 512 x 512.
- Peak memory: the largest RSS rise during one embedding, sampled every 2 ms, each in a fresh
  process (a warm process reuses memory it freed earlier).
- On a busy machine set ``OMP_WAIT_POLICY=PASSIVE``: PyTorch's two OpenMP threads otherwise spin
  at every small operation's barrier while the other is descheduled (decoder medians 5-10x worse).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never wait for the hub here

import numpy as np
import torch

from napari_medsam import MedSamPredictor
from napari_medsam.base.jobs import run_to_end
from napari_medsam.base.phantoms import ct_phantom_slice, ct_phantom_volume
from napari_medsam.engine.propagation import propagate
from napari_medsam.models.devices import cpu_has_native_bfloat16, resolve_dtype

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from baselines import PlainPredictor, PlainTinyViT, SamGetImageEmbeddings

WINDOW = (-160.0, 240.0)
SHARED_CT = "/work/shared/data/totalseg/example_ct_sm.nii.gz"
SHARED_SEG = "/work/shared/data/totalseg/example_seg.nii.gz"
SIDE = 512
TARGETS = {
    "embed_ratio": 0.45,  # ViT-B embedding, ratio to the baseline
    "lite_embed_s": 0.4,
    "box_ms": 20.0,
    "slice_mb": 2.1,
}


# ------------------------------------------------------------------------------ measuring


def embed_fn(predictor: Any, image: np.ndarray) -> Callable[[], None]:
    """``set_image`` of ``image`` with the embedding not cached (the encoder runs every time)."""

    def run() -> None:
        if hasattr(predictor, "cache"):
            predictor.cache.clear()
        predictor.set_image(image, window=WINDOW)

    return run


def embed_and_decode(
    variants: dict[str, Any], image: np.ndarray, box: Any, repeats: int, prompt_repeats: int, warmup: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per uncached embedding and per box -> mask of each variant, interleaved."""
    embed = interleaved({n: embed_fn(p, image) for n, p in variants.items()}, repeats, warmup)
    for predictor in variants.values():
        predictor.set_image(image, window=WINDOW)
    decodes = {n: (lambda p=p: p.predict(box=box)) for n, p in variants.items()}
    decode = interleaved(decodes, prompt_repeats, 3)
    return embed, decode


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
    from napari_medsam.models.loading import load_model
    from napari_medsam.models.weights import lite_checkpoint

    model = load_model("lite-medsam", device="cpu", dtype=args.dtype)
    plain_model = load_model("lite-medsam", device="cpu", dtype="float32")
    state = torch.load(lite_checkpoint(), map_location="cpu", weights_only=True)
    plain = PlainPredictor("lite-medsam", plain_model.sam, PlainTinyViT(state))
    return f"LiteMedSAM, {model.dtype} (real weights)", MedSamPredictor(model), plain


def medsam_vit_b(args: argparse.Namespace) -> tuple[str, MedSamPredictor, PlainPredictor]:
    """MedSAM ViT-B with random weights of the real architecture, ours and the plain way."""
    from napari_medsam.models import LoadedModel
    from napari_medsam.models.fast_vit import SamImageEncoder

    sam = random_vit_b()
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


def cold_child(source: str, backend: str, cache: str) -> None:
    """In a fresh process: load ``source`` with ``backend`` and segment one box; prints seconds, MB."""
    from napari_medsam.models.onnx_encoder import CACHE_ENV

    os.environ[CACHE_ENV] = cache
    image, _, box = ct_phantom_slice(SIDE, SIDE, seed=0)
    start = time.perf_counter()
    predictor = MedSamPredictor.from_pretrained(source, device="cpu", dtype="float32", backend=backend)
    loaded = time.perf_counter()
    predictor.set_image(image, window=WINDOW)
    predictor.predict(box=box)
    done = time.perf_counter()
    # VmHWM (the process's own peak; ru_maxrss survives exec and reports the parent's)
    with open("/proc/self/status") as status:
        peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 1e3
    print(f"{loaded - start} {done - start} {peak_mb}")


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
    parser.add_argument("--section", choices=["backends", "families", "speed"], default="backends")
    parser.add_argument("--ct", default=SHARED_CT, help="the real CT for the fidelity guard")
    parser.add_argument("--seg", default=SHARED_SEG, help="its labels")
    parser.add_argument("--skip-vit", action="store_true", help="backends: LiteMedSAM only")
    parser.add_argument("--cold-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--widget-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peak_child:
        child_peak(args)
        return
    if args.cold_child:
        cold_child(*args.cold_child)
        return
    if args.widget_child:
        import json

        session = widget_session(*args.widget_child)
        print(json.dumps({k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in session.items()}))
        return
    if args.section == "backends":
        bench_backends(args)
        return
    if args.section == "speed":
        bench_speed(args)
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


# ------------------------------------------------------------------------------ backends


def read_ct(ct: str, seg: str) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(ct)), sitk.GetArrayFromImage(sitk.ReadImage(seg))


#: TotalSegmentator "total" ids judged by the fidelity guard.
GUARD_ORGANS = {"spleen": 1, "kidney_right": 2, "kidney_left": 3, "liver": 5, "stomach": 6, "aorta": 52}


def label_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """The label's bounding box on a slice, as (x0, y0, x1, y1)."""
    rows, cols = np.nonzero(mask)
    return float(cols.min()), float(rows.min()), float(cols.max()), float(rows.max())


def guard_masks(predictor: object, ct: np.ndarray, seg: np.ndarray) -> list[np.ndarray]:
    """Masks for a box from the label on every slice of every guard organ (each slice encoded once)."""
    masks = []
    for index in range(len(ct)):
        labels = [label for label in GUARD_ORGANS.values() if (seg[index] == label).any()]
        if labels:
            predictor.set_image(ct[index], window=WINDOW)  # type: ignore[attr-defined]
            for label in labels:
                masks.append(predictor.predict(box=label_box(seg[index] == label)).mask)  # type: ignore[attr-defined]
    return masks


def liver_run(predictor: object, volume: np.ndarray, seg: np.ndarray) -> float:
    """Slices per second propagating the liver from its largest slice, cache empty."""
    if hasattr(predictor, "cache"):
        predictor.cache.clear()  # type: ignore[attr-defined]
    seconds, steps = walk(predictor, volume, seg)
    return len(steps) / seconds


def cold_start(source: str, backend: str, cache: str) -> tuple[float, float, float]:
    """(load s, load + first mask s, peak RSS MB) of a fresh process."""
    script = os.path.abspath(__file__)
    command = [sys.executable, script, "--cold-child", source, backend, cache]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        load, first, peak = (float(v) for v in done.stdout.strip().splitlines()[-1].split())
    except (ValueError, IndexError):
        print(f"cold-start child failed: {done.stderr[-800:]}", file=sys.stderr)
        return float("nan"), float("nan"), float("nan")
    return load, first, peak


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n### {title}\n")
    for i, row in enumerate([header, *rows]):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


OFFICIAL = "official script (PlainTinyViT + SamModel)"
TRANSFORMERS = "transformers baseline (get_image_embeddings)"


def lite_variants() -> dict[str, object]:
    """LiteMedSAM per backend and dtype (real weights), and the official script's way (PlainTinyViT)."""
    from napari_medsam.models.loading import load_model, with_backend
    from napari_medsam.models.weights import lite_checkpoint

    base = load_model("lite-medsam", device="cpu", dtype="float32")
    variants: dict[str, object] = {
        "torch float32": MedSamPredictor(base),
        "onnxruntime float32": MedSamPredictor(with_backend(base, "onnxruntime")),
    }
    if cpu_has_native_bfloat16():
        bf16 = load_model("lite-medsam", device="cpu", dtype="bfloat16")
        variants["torch bfloat16"] = MedSamPredictor(bf16)
    state = torch.load(lite_checkpoint(), map_location="cpu", weights_only=True)
    variants[OFFICIAL] = PlainPredictor("lite-medsam", base.sam, PlainTinyViT(state))
    return variants


def bench_backends(args: argparse.Namespace) -> None:
    """The backend tables (see the module docstring)."""
    import tempfile

    import transformers

    print(
        f"napari-medsam backend benchmark: {machine()}\ntransformers {transformers.__version__}, "
        f"onnxruntime {_ort_version()}\n"
        "times: medians over repeats, the variants interleaved within each repeat; CUDA unmeasured (no GPU)"
    )
    ct, seg = read_ct(args.ct, args.seg)
    from napari_medsam.io.samples import ABDOMINAL_CT

    shipped, shipped_seg = read_ct(str(ABDOMINAL_CT), args.seg)
    variants = lite_variants()
    image, organ = ct[15], seg[15] == GUARD_ORGANS["liver"]
    box = label_box(organ)

    embed, decode = embed_and_decode(variants, image, box, args.repeats, args.prompt_repeats, args.warmup)
    from napari_medsam.engine.prefetch import Lookahead

    rates: dict[str, list[float]] = {n: [] for n in variants}  # pipelined (the default)
    sequential: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(args.propagation_repeats):
        for name, predictor in variants.items():
            for pipelined, into in ((True, rates), (False, sequential)):
                Lookahead.enabled = pipelined
                into[name].append(liver_run(predictor, shipped, shipped_seg))
    Lookahead.enabled = True
    reference = guard_masks(variants["torch float32"], ct, seg)
    fidelity = {}
    for name, predictor in variants.items():
        ious = [_iou(a, b) for a, b in zip(guard_masks(predictor, ct, seg), reference, strict=True)]
        fidelity[name] = (float(np.mean(ious)), float(np.min(ious)), len(ious))
    official = median(rates[OFFICIAL])
    rows = []
    for name in variants:
        mean, worst, count = fidelity[name]
        passes = "pass" if mean >= 0.99 and worst >= 0.97 else "FAIL"
        rate = median(rates[name])
        rows.append((
            name, f"{1e3 * median(embed[name]):.0f}", f"{1e3 * median(decode[name]):.1f}",
            f"{rate:.2f} / {median(sequential[name]):.2f}", f"{official / rate:.2f}x",
            f"{mean:.4f} / {worst:.4f} ({count}) {passes}",
        ))  # fmt: skip
    print_table(
        "LiteMedSAM (real weights), 2D box prompts",
        ("backend, dtype", "embedding ms", "decoder ms", "liver slices/s pipelined / sequential",
         "per-slice cost vs official",
         "mask IoU vs torch fp32 mean / worst (n) guard"),
        rows,
    )  # fmt: skip

    # cold start in fresh processes: torch; ONNX Runtime with an empty, then a warm graph cache
    with tempfile.TemporaryDirectory(prefix="napari-medsam-onnx-") as cache:
        cold = {
            "torch float32": cold_start("lite-medsam", "torch", cache),
            "onnxruntime float32, empty cache (export)": cold_start("lite-medsam", "onnxruntime", cache),
            "onnxruntime float32, warm cache": cold_start("lite-medsam", "onnxruntime", cache),
        }
    print_table(
        "LiteMedSAM cold start, fresh process (model load; load + first 512 x 512 mask; peak RSS)",
        ("backend", "load s", "load + first mask s", "peak RSS MB"),
        [(n, f"{a:.2f}", f"{b:.2f}", f"{c:.0f}") for n, (a, b, c) in cold.items()],
    )
    if not args.skip_vit:
        bench_vit_backends(args)


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return "not installed"


def bench_vit_backends(args: argparse.Namespace) -> None:
    """MedSAM ViT-B (random weights: timing only) per backend, against transformers' get_image_embeddings."""
    import tempfile

    from napari_medsam.models import LoadedModel
    from napari_medsam.models.fast_vit import SamImageEncoder
    from napari_medsam.models.loading import with_backend
    from napari_medsam.models.onnx_encoder import CACHE_ENV

    sam = random_vit_b()
    cpu = torch.device("cpu")
    base = LoadedModel("medsam", sam, SamImageEncoder(sam), "vit-b-random", cpu, torch.float32)
    image, _, box = ct_phantom_slice(SIDE, SIDE, seed=0)
    with tempfile.TemporaryDirectory(prefix="napari-medsam-onnx-") as cache:
        os.environ[CACHE_ENV] = cache
        start = time.perf_counter()
        onnx_model = with_backend(base, "onnxruntime")
        export_s = time.perf_counter() - start
        variants: dict[str, object] = {
            TRANSFORMERS: PlainPredictor("medsam", sam, SamGetImageEmbeddings(sam)),
            "torch float32 (fast ViT)": MedSamPredictor(base),
            "onnxruntime float32": MedSamPredictor(onnx_model),
        }
        if cpu_has_native_bfloat16():
            bf16 = copy.deepcopy(sam).to(torch.bfloat16)
            variants["torch bfloat16 (fast ViT)"] = MedSamPredictor(
                LoadedModel("medsam", bf16, SamImageEncoder(bf16), "vit-b-random", cpu, torch.bfloat16)
            )

        embed, decode = embed_and_decode(
            variants, image, box, args.vit_repeats, args.prompt_repeats, args.warmup
        )
        masks = {n: p.predict(box=box).mask for n, p in variants.items()}  # type: ignore[attr-defined]
    baseline = median(embed[TRANSFORMERS])
    rows = [
        (n, f"{median(embed[n]):.2f}", f"{median(embed[n]) / baseline:.2f}x",
         f"{1e3 * median(decode[n]):.1f}", f"{_iou(masks[n], masks['torch float32 (fast ViT)']):.4f}")
        for n in variants
    ]  # fmt: skip
    print_table(
        f"MedSAM ViT-B, RANDOM weights (timing only; fidelity unmeasured), 512 x 512 phantom; "
        f"ONNX export {export_s:.0f} s",
        ("backend, dtype", "embedding s", "vs transformers", "decoder ms", "phantom mask IoU vs torch fp32"),
        rows,
    )


# ------------------------------------------------------------------------------ speed (issues 27, 33)


def random_vit_b() -> Any:
    """transformers' ``SamModel`` ViT-B (``SamConfig()``) with non-trivial random weights (std 0.02;
    SAM's own init is ~1e-10): the real architecture's work, for timing only."""
    from transformers import SamConfig, SamModel

    torch.manual_seed(0)
    sam = SamModel(SamConfig()).eval().requires_grad_(False)
    with torch.no_grad():
        for name, param in sam.named_parameters():
            if param.ndim > 1 and "layer_norm" not in name:
                param.normal_(0.0, 0.02)
    return sam


def gemm_fns(side: int = 2048) -> dict[str, Callable[[], object]]:
    """A side^3 matrix product: float32 through ``torch.matmul`` (MKL) and through oneDNN (the
    library the encoders' fused calls use; on AMD CPUs MKL takes a slower path), and bfloat16
    (oneDNN) where the CPU has native bfloat16."""
    a, b = torch.randn(side, side), torch.randn(side, side)
    onednn = torch.ops.mkldnn._linear_pointwise
    fns: dict[str, Callable[[], object]] = {
        "GEMM float32, torch.matmul (MKL)": lambda: a @ b,
        "GEMM float32, oneDNN": lambda: onednn(a, b, None, "none", [], ""),
    }
    if cpu_has_native_bfloat16():
        a16, b16 = a.bfloat16(), b.bfloat16()
        fns["GEMM bfloat16, oneDNN"] = lambda: onednn(a16, b16, None, "none", [], "")
    return fns


def encoder_against_gemm(
    models: dict[str, Any], image: np.ndarray, official_gflop: float, repeats: int, warmup: int
) -> list[tuple[str, ...]]:
    """Rows: the GEMM rates and each LiteMedSAM encoder (embedding through ``MedSamPredictor``,
    preprocessing included, cache missed; the PyTorch one also with its plain operators), all
    interleaved in one run. GFLOP/s are the official (plain float32) encoder's FLOP count over
    the time; the float32 GEMM rate is the faster of MKL's and oneDNN's."""
    side = 2048
    fns = gemm_fns(side)

    for name, model in models.items():
        fns[f"LiteMedSAM encoder, {name}"] = embed_fn(MedSamPredictor(model), image)
        if model.backend == "torch":
            torch_embed = fns[f"LiteMedSAM encoder, {name}"]

            def plain(run: Callable[[], None] = torch_embed) -> None:
                with plain_ops():
                    run()

            fns[f"LiteMedSAM encoder, {name}, plain operators"] = plain
    with torch.inference_mode():
        times = interleaved(fns, repeats, warmup)
    gemm_gflop = 2 * side**3 / 1e9
    rates = {n: (gemm_gflop if "GEMM" in n else official_gflop) / median(t) for n, t in times.items()}
    fp32 = max(rates["GEMM float32, torch.matmul (MKL)"], rates["GEMM float32, oneDNN"])
    bf16 = rates.get("GEMM bfloat16, oneDNN")
    rows = []
    for name, rate in rates.items():
        seconds = "" if name.startswith("GEMM") else f"{median(times[name]):.3f}"
        share = f"{rate / fp32:.2f}" + ("" if bf16 is None else f" / {rate / bf16:.2f}")
        rows.append((name, seconds, f"{rate:.0f}", share))
    return rows


@contextlib.contextmanager
def plain_ops() -> Iterator[None]:
    """Run the encoders with PyTorch's plain operators, not the fused oneDNN calls (models/onednn)."""
    from napari_medsam.models import onednn

    checked = list(onednn._CHECKED)
    onednn._CHECKED[:] = [False]
    try:
        yield
    finally:
        onednn._CHECKED[:] = checked


def encoder_gflop(encoder: Callable[[torch.Tensor], torch.Tensor], side: int = 256) -> float:
    """GFLOP of one embedding as PyTorch's FLOP counter sees the encoder's plain operators (it has
    no formula for the fused oneDNN calls, nor for CPU attention: count the official encoder)."""
    from torch.utils.flop_counter import FlopCounterMode

    with plain_ops(), torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(torch.rand(1, 3, side, side))
    return counter.get_total_flops() / 1e9


def machine() -> str:
    """The CPU, its flags, threads, native bfloat16, the load average now and OMP_WAIT_POLICY."""
    from napari_medsam.models.backends import cpu_name

    load = tuple(round(v, 2) for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (
        f"{cpu_name()}\n{os.cpu_count()} logical CPUs, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); native bf16 {cpu_has_native_bfloat16()}; load average "
        f"{load}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}"
    )


def walk(predictor: Any, volume: np.ndarray, seg: np.ndarray) -> tuple[float, list[Any]]:
    """Seconds and steps of propagating the liver from its largest slice (cache as it is)."""
    liver = seg == GUARD_ORGANS["liver"]
    key = int(np.argmax(liver.sum(axis=(1, 2))))
    steps: list[Any] = []
    start = time.perf_counter()
    run_to_end(propagate(predictor, volume, key, key_box=label_box(liver[key]), window=WINDOW), steps.append)
    return time.perf_counter() - start, steps


def propagation_speed(
    predictors: dict[str, Any], volume: np.ndarray, seg: np.ndarray, repeats: int
) -> list[tuple[str, ...]]:
    """Rows: cold propagation per slice of each predictor (cache emptied; the official script's
    way first, the others against it), interleaved; then warm (every slice encoded) for ours,
    with the masks compared to its cold walk."""
    runs: dict[str, list[tuple[float, list[Any]]]] = {name: [] for name in predictors}

    def cold(name: str) -> Callable[[], None]:
        def run() -> None:
            predictor = predictors[name]
            if hasattr(predictor, "cache"):
                predictor.cache.clear()
            seconds, steps = walk(predictor, volume, seg)
            runs[name].append((seconds / len(steps), steps))

        return run

    interleaved({name: cold(name) for name in predictors}, repeats, 0)
    official = median([s for s, _ in runs[OFFICIAL]])
    rows = []
    for name, done in runs.items():
        per_slice = median([s for s, _ in done])
        ratio = f"{per_slice / official:.2f}x"
        rows.append((f"cold, {name}", f"{1e3 * per_slice:.0f} ms / slice", ratio, ""))
    for name, predictor in predictors.items():
        if name == OFFICIAL:
            continue
        seconds, steps = walk(predictor, volume, seg)  # every slice is in the cache now
        reference = runs[name][-1][1]
        same = len(reference) == len(steps) and all(
            (a.slice_index, a.stop) == (b.slice_index, b.stop) and _same_mask(a.mask, b.mask)
            for a, b in zip(reference, steps, strict=True)
        )
        rate = len(steps) / seconds
        rows.append((f"warm, {name}", f"{rate:.1f} slices/s", "", f"masks equal to its cold walk: {same}"))
    return rows


def _same_mask(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))


def vit_against_transformers(repeats: int) -> list[tuple[str, ...]]:
    """Rows: MedSAM ViT-B (random weights) embedding through transformers' get_image_embeddings,
    our fast ViT (PyTorch float32) and OpenVINO float32, interleaved; the ratio to transformers,
    the embedding's difference and the phantom mask's IoU against transformers'."""
    from napari_medsam.models import LoadedModel
    from napari_medsam.models.backends import openvino_installed
    from napari_medsam.models.fast_vit import SamImageEncoder
    from napari_medsam.models.loading import with_backend

    sam = random_vit_b()
    cpu = torch.device("cpu")
    base = LoadedModel("medsam", sam, SamImageEncoder(sam), "vit-b-random", cpu, torch.float32)
    variants: dict[str, Any] = {
        TRANSFORMERS: PlainPredictor("medsam", sam, SamGetImageEmbeddings(sam)),
        "torch float32 (fast ViT)": MedSamPredictor(base),
    }
    if openvino_installed():
        variants["openvino float32"] = MedSamPredictor(with_backend(base, "openvino"))
    image, _, box = ct_phantom_slice(SIDE, SIDE, seed=0)
    with torch.inference_mode():
        times = interleaved({n: embed_fn(p, image) for n, p in variants.items()}, repeats, 1)
        pixels = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0))
        want = sam.get_image_embeddings(pixels)
        embeddings = {n: p.model.encoder(pixels) for n, p in variants.items() if n != TRANSFORMERS}
    masks = {n: p.predict(box=box).mask for n, p in variants.items()}
    baseline = median(times[TRANSFORMERS])
    rows = []
    for name in variants:
        got = embeddings.get(name, want)
        difference = float((got.float() - want).norm() / want.norm())
        rows.append((
            name, f"{median(times[name]):.2f}", f"{median(times[name]) / baseline:.2f}x",
            f"{difference:.1e}", f"{_iou(masks[name], masks[TRANSFORMERS]):.4f}",
        ))  # fmt: skip
    return rows


def widget_session(ct_path: str, seg_path: str) -> dict[str, Any]:
    """Open the CT, then the widget (LiteMedSAM, default backend); measure the viewer's event-loop
    delay (a 10 ms QTimer's lateness) while the model loads and while the slices encode in the
    background, and the first Segment after the load (the button, a box from the label) on the
    slice farthest from the one on screen, not yet encoded. Returns the numbers."""
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_medsam._qt.widget import MedSamWidget

    viewer = napari.Viewer(show=False)
    (image,) = viewer.open(ct_path, plugin="napari-medsam")
    (reference,) = viewer.open(seg_path, plugin="napari-medsam")  # on the image's grid, as shown
    seg = np.asarray(reference.data).copy()
    viewer.layers.remove(reference)
    depth = image.data.shape[0]
    late: list[tuple[float, float]] = []  # (when, how late)
    start = time.perf_counter()
    last = [start]

    def probe() -> None:
        now = time.perf_counter()
        late.append((now, max(0.0, now - last[0] - 0.010)))
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(probe)
    timer.start()
    widget = MedSamWidget(viewer)
    widget.model, widget.device = "lite-medsam", "cpu"
    viewer.window.add_dock_widget(widget)
    boxes, _ = widget.add_prompt_layers()

    def wait(done: Callable[[], bool], limit: float = 600.0) -> None:
        deadline = time.perf_counter() + limit
        while not done() and time.perf_counter() < deadline:
            QApplication.processEvents()
            time.sleep(0.002)

    wait(lambda: widget.predictor is not None)
    loaded = time.perf_counter()
    # the first Segment: the labelled slice farthest from the one on screen
    shown = int(viewer.dims.current_step[0])
    labelled = [z for z in range(depth) if seg[z].any()]
    far = max(labelled, key=lambda z: abs(z - shown))
    predictor = widget.predictor
    cached_before = predictor.is_cached(image.data[far], widget.intensity_window(image))
    viewer.dims.set_point(0, image.data_to_world([far, 0, 0])[0])
    organ = seg[far] == np.bincount(seg[far][seg[far] > 0]).argmax()
    x0, y0, x1, y1 = label_box(organ)
    x0, y0, x1, y1 = x0 - 3, y0 - 3, x1 + 3, y1 + 3
    boxes.add_rectangles([[far, y0, x0], [far, y0, x1], [far, y1, x1], [far, y1, x0]])
    outcome: list[str] = []
    widget.job_finished.connect(outcome.append)
    clicked = time.perf_counter()
    widget.segment_button.native.click()
    wait(lambda: bool(outcome))
    segment_s = time.perf_counter() - clicked
    wait(lambda: widget.prefetcher.progress == (depth, depth))
    end = time.perf_counter()
    timer.stop()
    encoded = widget.prefetcher.progress[0]
    backend = getattr(getattr(predictor, "model", None), "backend", "?")
    viewer.close()

    def delays(a: float, b: float) -> np.ndarray:
        return 1e3 * np.array([d for when, d in late if a <= when <= b] or [0.0])

    return {
        "loading": delays(start, loaded), "encoding": delays(loaded, end), "load_s": loaded - start,
        "all_s": end - start, "encoded": encoded, "depth": depth, "segment_s": segment_s,
        "segment_outcome": outcome[0] if outcome else "none", "far": far, "shown": shown,
        "cached_before": cached_before, "backend": backend,
    }  # fmt: skip


def fresh_widget_session(ct_path: str, seg_path: str) -> dict[str, Any]:
    """:func:`widget_session` in a fresh process (nothing imported or loaded yet, as for a user)."""
    import json

    command = [sys.executable, os.path.abspath(__file__), "--widget-child", ct_path, seg_path]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    try:
        session = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as error:
        raise RuntimeError(f"the widget session failed: {done.stderr[-1500:]}") from error
    return {k: np.asarray(v) if k in ("loading", "encoding") else v for k, v in session.items()}


def bench_speed(args: argparse.Namespace) -> None:
    """The speed tables of issues 27 and 33 (see the module docstring), from one run."""
    from napari_medsam.models.backends import openvino_installed
    from napari_medsam.models.loading import load_model, with_backend
    from napari_medsam.models.weights import lite_checkpoint

    print(f"napari-medsam speed benchmark ({time.strftime('%Y-%m-%d %H:%M')}): {machine()}")
    ct, seg = read_ct(args.ct, args.seg)
    base = load_model("lite-medsam", device="cpu", dtype="float32", backend="torch")
    models = {"torch float32 (fused oneDNN calls)": base}
    if openvino_installed():
        models["openvino float32"] = with_backend(base, "openvino")
    auto = load_model("lite-medsam", device="cpu", dtype="float32", backend="auto")
    state = torch.load(lite_checkpoint(), map_location="cpu", weights_only=True)
    official = PlainTinyViT(state)
    gflop = encoder_gflop(official)
    print(f"\nauto runs LiteMedSAM's encoder on: {auto.backend}")
    print_table(
        f"LiteMedSAM's encoder against the machine's GEMM rates ({gflop:.1f} GFLOP: the official float32 "
        "encoder's count), interleaved in one run",
        ("what", "seconds", "GFLOP/s", "of the fp32 / bf16 GEMM rate"),
        encoder_against_gemm(models, ct[15], gflop, args.repeats, args.warmup),
    )
    predictors: dict[str, Any] = {OFFICIAL: PlainPredictor("lite-medsam", base.sam, official)}
    predictors.update({name: MedSamPredictor(model) for name, model in models.items()})
    print_table(
        f"Propagation of the liver through the shared CT ({len(ct)} slices): per slice against the "
        "official script's way",
        ("what", "time", "against the official script", "masks"),
        propagation_speed(predictors, ct, seg, args.propagation_repeats),
    )
    if not args.skip_vit:
        print_table(
            "MedSAM ViT-B (RANDOM weights of the real architecture: timing only), 512 x 512 phantom",
            ("encoder", "embedding s", "vs transformers", "embedding rel. L2 vs transformers", "mask IoU"),
            vit_against_transformers(args.vit_repeats),
        )
    session = fresh_widget_session(args.ct, args.seg)
    rows = []
    for phase in ("loading", "encoding"):
        d = session[phase]
        percentiles = (f"{np.percentile(d, q):.0f}" for q in (50, 95, 99))
        rows.append((phase, f"{len(d)}", *percentiles, f"{d.max():.0f}"))
    print_table(
        f"The widget (LiteMedSAM, backend {session['backend']}): event-loop delay in ms (10 ms QTimer); "
        f"model loaded {session['load_s']:.1f} s after the widget opened, {session['encoded']} / "
        f"{session['depth']} slices encoded after {session['all_s']:.1f} s",
        ("phase", "ticks", "p50", "p95 (target <= 100)", "p99", "max"),
        rows,
    )
    print(
        f"\nFirst Segment after the load, on slice {session['far']} (slice {session['shown']} on screen; "
        f"encoded before: {session['cached_before']}): {session['segment_s']:.2f} s "
        f"({session['segment_outcome']}; target <= 1.5 s)"
    )


if __name__ == "__main__":
    main()

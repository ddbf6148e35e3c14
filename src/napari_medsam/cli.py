"""The ``napari-medsam`` command: segment an image or volume slice from the shell, or run a demo."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_medsam.errors import ModelLoadError
from napari_medsam.preprocessing import WINDOW_PRESETS

if TYPE_CHECKING:
    from collections.abc import Sequence

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha", ".mhd")
PLAIN_SUFFIXES = (".npy", ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in (".seg.nrrd", ".nii.gz"):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def read_image(path: Path) -> tuple[np.ndarray, object | None]:
    """Read a 2D image or a volume; returns (array, geometry or None)."""
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    suffix = _suffix(path)
    if path.is_dir() or suffix in (*VOLUME_SUFFIXES, ".dcm"):
        from napari_medsam.volume_io import read_volume

        return read_volume(path)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix in (".tif", ".tiff"):
        import tifffile

        return tifffile.imread(path), None
    if suffix in PLAIN_SUFFIXES:
        from skimage.io import imread

        return imread(path), None
    raise ValueError(
        f"cannot read {path.name}: use .npy, .tif, .png, .jpg, .nii(.gz), .nrrd, .mha/.mhd, .dcm "
        "or a DICOM folder"
    )


def write_mask(path: Path, labels: np.ndarray, geometry: object | None) -> None:
    """Write labels in the format the extension names (PNG: 0/255 for one object, else label ids)."""
    suffix = _suffix(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".nii", ".nii.gz", ".nrrd", ".seg.nrrd", ".mha"):
        from napari_medsam.volume_io import write_labels

        write_labels(path, labels, geometry)
    elif suffix == ".npy":
        np.save(path, labels)
    elif suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, labels)
    elif suffix in (".png", ".bmp"):
        from skimage.io import imsave

        if labels.ndim != 2:
            raise ValueError(
                f"{path.name}: a {labels.ndim}D result needs a volume format (.nii.gz, .nrrd, .tif, .npy)"
            )
        if labels.max() > 255:
            raise ValueError(f"{path.name}: more than 255 labels; use .tif or .npy")
        image = (labels > 0).astype(np.uint8) * 255 if labels.max() <= 1 else labels.astype(np.uint8)
        imsave(path, image, check_contrast=False)
    else:
        raise ValueError(f"cannot write {path.name}: use .png, .tif, .npy, .nii(.gz), .nrrd or .mha")


def _parse_window(args: argparse.Namespace) -> tuple[float, float] | None:
    if args.window is not None and args.preset is not None:
        raise ValueError("give either --window or --preset, not both")
    if args.preset is not None:
        return WINDOW_PRESETS[args.preset]
    return None if args.window is None else (args.window[0], args.window[1])


def _slice_of(image: np.ndarray, args: argparse.Namespace) -> tuple[np.ndarray, bool]:
    """The 2D slice to segment and whether the input is a volume."""
    is_rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    if image.ndim == 2 or is_rgb:
        if args.slice is not None:
            raise ValueError(f"--slice given but the image is 2D (shape {image.shape})")
        return image, False
    if image.ndim != 3:
        raise ValueError(f"expected a 2D image or a 3D volume, got shape {image.shape}")
    if args.slice is None:
        raise ValueError(f"the input is a volume of shape {image.shape}; pass --slice Z")
    depth = image.shape[args.axis]
    if not 0 <= args.slice < depth:
        raise ValueError(
            f"--slice {args.slice} is outside the volume (0..{depth - 1} along axis {args.axis})"
        )
    return np.take(image, args.slice, axis=args.axis), True


def _points(args: argparse.Namespace) -> tuple[np.ndarray | None, np.ndarray | None]:
    if not args.point:
        return None, None
    values = np.asarray(args.point, dtype=np.float64)
    if not np.isin(values[:, 2], (0, 1)).all():
        raise ValueError("--point LABEL must be 1 (foreground) or 0 (background)")
    return values[:, :2], values[:, 2].astype(np.int64)


def run_segment(args: argparse.Namespace) -> int:
    from napari_medsam.predictor import MedSamPredictor

    image, geometry = read_image(Path(args.image))
    window = _parse_window(args)
    plane, is_volume = _slice_of(np.asarray(image), args)
    points, labels = _points(args)
    if not args.box and points is None:
        raise ValueError("give at least one --box X0 Y0 X1 Y1 or --point X Y LABEL")
    predictor = MedSamPredictor.from_pretrained(
        args.model, device=args.device, dtype=args.dtype, family=args.family
    )
    start = time.perf_counter()
    predictor.set_image(plane, window=window)
    result = np.zeros(plane.shape[:2], dtype=np.uint16)
    prompts = [(box, points, labels) for box in args.box] if args.box else [(None, points, labels)]
    for label_id, (box, pts, lab) in enumerate(prompts, start=1):
        mask = predictor.predict(box=box, points=pts, point_labels=lab).mask
        result[mask & (result == 0)] = label_id
    if is_volume and args.propagate:
        output = _propagate(predictor, np.asarray(image), args, window, result)
    elif is_volume and _suffix(Path(args.output)) in (*VOLUME_SUFFIXES, ".npy", ".tif", ".tiff"):
        output = np.zeros(np.asarray(image).shape, dtype=np.uint16)
        index = [slice(None)] * output.ndim
        index[args.axis] = args.slice
        output[tuple(index)] = result
    else:
        if args.propagate:
            raise ValueError("--propagate needs a volume and --slice Z")
        output = result
    output = output.astype(np.uint8) if output.max() <= 255 else output
    write_mask(Path(args.output), output, geometry)
    elapsed = time.perf_counter() - start
    print(
        f"{args.output}: {int(np.count_nonzero(output))} voxels in {int(output.max())} object(s), "
        f"{predictor.family} on {predictor.model.device}, {elapsed:.2f} s"
    )
    return 0


def _propagate(predictor, volume, args, window, key_labels) -> np.ndarray:
    from napari_medsam.propagation import propagate_labels

    return propagate_labels(predictor, volume, args.slice, key_labels, axis=args.axis, window=window)


def run_demo(args: argparse.Namespace) -> int:
    """Segment a synthetic CT-like phantom with the bundled LiteMedSAM and report Dice and timings."""
    from napari_medsam.phantoms import ct_phantom_slice
    from napari_medsam.predictor import MedSamPredictor

    image, truth, box = ct_phantom_slice()
    start = time.perf_counter()
    predictor = MedSamPredictor.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    loaded = time.perf_counter()
    predictor.set_image(image, window=WINDOW_PRESETS["soft-tissue"])
    encoded = time.perf_counter()
    mask = predictor.predict(box=box).mask
    decoded = time.perf_counter()
    dice = 2.0 * np.logical_and(mask, truth).sum() / (mask.sum() + truth.sum())
    out = Path(args.output)
    write_mask(out, mask.astype(np.uint8), None)
    print(f"model      {args.model} ({predictor.family}) on {predictor.model.device}")
    print(f"image      synthetic CT phantom {image.shape[1]} x {image.shape[0]} px, window soft tissue")
    print(f"box        x0={box[0]:.0f} y0={box[1]:.0f} x1={box[2]:.0f} y1={box[3]:.0f}")
    print(
        f"timings    load {loaded - start:.2f} s, encode {encoded - loaded:.2f} s, "
        f"box->mask {1000 * (decoded - encoded):.0f} ms"
    )
    print(f"dice       {dice:.3f} against the phantom's true outline")
    print(f"mask       {out}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-medsam", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model loading and choices")
    commands = parser.add_subparsers(dest="command", required=True)

    def model_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--model",
            default="lite-medsam",
            help="lite-medsam (bundled, offline; default), medsam, sam-vit-base/-large/-huge, "
            "a hub id, a Hugging Face folder or a .pth file",
        )
        sub.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N or mps")
        sub.add_argument("--dtype", default="auto", help="auto (default), float32, bfloat16 or float16")

    segment = commands.add_parser("segment", help="segment objects in an image or a volume slice")
    segment.add_argument(
        "image", help="image (.npy .tif .png .jpg) or volume (.nii(.gz) .nrrd .mha .dcm, DICOM folder)"
    )
    segment.add_argument(
        "--box",
        nargs=4,
        type=float,
        action="append",
        metavar=("X0", "Y0", "X1", "Y1"),
        help="box in pixels (x = column, y = row); repeat for several objects",
    )
    segment.add_argument(
        "--point",
        nargs=3,
        type=float,
        action="append",
        metavar=("X", "Y", "LABEL"),
        help="click in pixels, LABEL 1 = foreground, 0 = background; repeatable",
    )
    segment.add_argument("--slice", type=int, help="slice index for volumes")
    segment.add_argument("--axis", type=int, default=0, help="slice axis for volumes (default 0)")
    segment.add_argument(
        "--window",
        nargs=2,
        type=float,
        metavar=("LOW", "HIGH"),
        help="intensity window, e.g. -160 240 for CT soft tissue (default: slice min..max)",
    )
    segment.add_argument("--preset", choices=sorted(WINDOW_PRESETS), help="CT window preset")
    segment.add_argument(
        "--family", choices=["medsam", "sam", "lite-medsam"], help="override the model family"
    )
    segment.add_argument("--propagate", action="store_true", help="propagate the object through the volume")
    segment.add_argument(
        "-o",
        "--output",
        required=True,
        help="mask file: .png .tif .npy, or .nii.gz .nrrd .mha (volume geometry kept)",
    )
    model_options(segment)
    segment.set_defaults(func=run_segment)

    demo = commands.add_parser(
        "demo", help="segment a synthetic CT phantom offline and report Dice and timings"
    )
    demo.add_argument("-o", "--output", default="medsam_demo_mask.png", help="where to write the mask")
    model_options(demo)
    demo.set_defaults(func=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-medsam`` console script; errors are one line on stderr."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, ModelLoadError, OSError) as err:
        print(f"napari-medsam: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-medsam: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

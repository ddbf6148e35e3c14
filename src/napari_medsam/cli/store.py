"""``napari-medsam store``: what an embedding store holds, per model and volume, and pruning it."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def byte_size(text: str) -> int:
    """An argparse type: a size such as ``500M``, ``2G``, ``1.5T`` (powers of 1024) or plain bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a size such as 500M or 2G, got {text!r}")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def human_size(nbytes: float) -> str:
    """``12 B``, ``200.0 MiB``, ``1.5 GiB``."""
    if nbytes < 1024:
        return f"{nbytes:.0f} B"
    for unit in ("KiB", "MiB"):
        nbytes /= 1024
        if nbytes < 1024:
            return f"{nbytes:.1f} {unit}"
    return f"{nbytes / 1024:.1f} GiB"


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register the ``store`` subcommand."""
    store = commands.add_parser(
        "store", help="report an embedding store's size per model and volume; prune it"
    )
    store.add_argument("store", type=Path, help="embedding store (.zarr)")
    store.add_argument(
        "--prune-to",
        type=byte_size,
        metavar="SIZE",
        help="remove the least recently used embeddings until at most SIZE remain (e.g. 500M, 2G)",
    )
    store.add_argument(
        "--model",
        metavar="M",
        help="remove model M's embeddings (its name as loaded, e.g. lite-medsam, or 6+ characters of "
        "its weights digest); with --prune-to, prune only M's to SIZE",
    )
    store.set_defaults(func=run_store)


def run_store(args: argparse.Namespace) -> int:
    """Prune if asked, then print the store's contents."""
    from napari_medsam.engine.store import EmbeddingStore

    if not args.store.is_dir():
        raise FileNotFoundError(f"no embedding store at {args.store}")
    store = EmbeddingStore(args.store)
    if args.prune_to is not None or args.model is not None:
        removed, freed = store.prune(args.prune_to, args.model)
        print(f"removed {removed} embedding(s), {human_size(freed)}")
    usage = store.usage()
    print(
        f"{store.path}: {sum(u.entries for u in usage)} embedding(s), "
        f"{human_size(sum(u.nbytes for u in usage))}"
    )
    for model in dict.fromkeys(u.model for u in usage):
        rows = [u for u in usage if u.model == model]
        size, entries = sum(u.nbytes for u in rows), sum(u.entries for u in rows)
        print(f"  {model.describe()}: {entries} slice(s), {human_size(size)}")
        for row in rows:
            print(f"    {row.volume or '(no volume)'}: {row.entries} slice(s), {human_size(row.nbytes)}")
    return 0

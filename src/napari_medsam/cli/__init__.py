"""The ``napari-medsam`` command: segment images and volumes, embed and segment cohorts, run a demo."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from napari_medsam.base.jobs import user_message
from napari_medsam.cli import batch, demo, embed, segment, store

if TYPE_CHECKING:
    from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="napari-medsam", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log model loading and choices")
    commands = parser.add_subparsers(dest="command", required=True)
    for module in (segment, embed, batch, store, demo):
        module.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-medsam`` console script; errors are one line on stderr."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    try:
        return args.func(args)
    except Exception as err:
        message = user_message(err) or (str(err) if isinstance(err, OSError) else None)
        if message is None:
            raise  # a bug: the traceback is what a report needs
        print(f"napari-medsam: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("napari-medsam: interrupted", file=sys.stderr)
        return 130

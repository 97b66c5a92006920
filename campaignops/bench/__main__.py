"""`make bench`: run every benchmark (or those named) and write their docs pages."""

from __future__ import annotations

import argparse
import importlib
import sys

BENCHES = ("segmentation", "qa", "handoff", "calendar", "fresh_load", "run", "results", "sandbox", "watch",
           "lifecycle")


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all)."""
    parser = argparse.ArgumentParser(prog="python -m campaignops.bench")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated: " + ", ".join(BENCHES))
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args(argv)
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in BENCHES:
            parser.error(f"unknown benchmark {name}; use {', '.join(BENCHES)}")
        module = importlib.import_module(f"campaignops.bench.{name}")
        path = module.run(quick=args.quick)
        print(f"{name}: wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

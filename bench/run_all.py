"""Run the benchmarks: the dispatcher tick, persisting metrics and the API under load; the soak
only with --soak.

    .venv/bin/python bench/run_all.py [--soak] [--soak-seconds 300] [--soak-connections 1000]

Each benchmark prints its own figures and PASS/MISS lines; this prints a summary at the end.
The exit status is 0 even when a target is missed: benchmarks report, they do not gate.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _setup
import api
import dispatcher
import persist


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].rstrip(";"))
    parser.add_argument("--soak", action="store_true", help="also run the realtime soak (a few minutes)")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--soak-connections", type=int, default=1000)
    args = parser.parse_args()

    started = time.monotonic()
    summary: list[tuple[str, bool]] = []
    summary.append(("dispatcher", dispatcher.main([])["ok"]))
    summary.append(("persist", persist.main([])["ok"]))
    summary.append(("api", api.main([])["ok"]))
    if args.soak:
        import soak

        soak_args = ["--seconds", str(args.soak_seconds), "--connections", str(args.soak_connections)]
        summary.append(("soak", soak.main(soak_args)["ok"]))

    _setup.heading(f"Summary ({time.monotonic() - started:.0f} s)")
    for name, ok in summary:
        _setup.out(f"{_setup.verdict(ok)}  {name}{'' if ok else ': see the MISS lines above'}")
    if not args.soak:
        _setup.out("(the realtime soak was skipped; run with --soak)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run the benchmarks: the dispatcher tick, persisting metrics and the API under load; the soak
only with --soak, the shared-throttle simulation only with --throttle.

    .venv/bin/python bench/run_all.py [--soak] [--soak-seconds 300] [--soak-connections 1000] [--throttle]

Each benchmark prints its own figures and PASS/MISS lines; this prints a summary at the end.
The exit status is 0 even when a target is missed: benchmarks report, they do not gate.
"""

from __future__ import annotations

import argparse
import subprocess
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
    parser.add_argument(
        "--throttle", action="store_true", help="also run the shared-throttle simulation (about 8 minutes)"
    )
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
    if args.throttle:
        # A process of its own: it picks its database and Redis db before Django starts.
        script = Path(__file__).resolve().parent / "throttle_sim.py"
        sys.stdout.flush()
        summary.append(("throttle_sim", subprocess.run([sys.executable, str(script), "--exit-code"]).returncode == 0))

    _setup.heading(f"Summary ({time.monotonic() - started:.0f} s)")
    for name, ok in summary:
        _setup.out(f"{_setup.verdict(ok)}  {name}{'' if ok else ': see the MISS lines above'}")
    if not args.soak:
        _setup.out("(the realtime soak was skipped; run with --soak)")
    if not args.throttle:
        _setup.out("(the shared-throttle simulation was skipped; run with --throttle)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

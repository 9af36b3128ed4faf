"""Benchmark ``mailprov --help``: wall time (best of N runs) and the modules that cost the most to import.

``python -X importtime`` reports each module's own import time; the heaviest ones are printed so that a
module that slipped into the start-up path (an argon2 hash at import, asyncio for a command that does not
use it) shows up by name. Goal: ``mailprov --help`` under 0.3 s on an idle machine.

    .venv/bin/python bench/cli_startup.py [--runs 10] [--top 12]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="runs of each measurement (the best is kept)")
    parser.add_argument("--top", type=int, default=12, help="how many modules to list")
    args = parser.parse_args()
    script = Path(sys.executable).with_name("mailprov")
    walls = []
    for _ in range(args.runs):
        start = time.perf_counter()
        subprocess.run([str(script), "--help"], check=True, capture_output=True, timeout=60)
        walls.append(time.perf_counter() - start)
    best: dict[str, int] = {}
    total = None
    for _ in range(args.runs):
        done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import mailprov.cli"], capture_output=True, text=True, timeout=60)
        for line in done.stderr.splitlines():
            parts = line.split("|")
            if len(parts) != 3 or not parts[0].strip().startswith("import time:") or not parts[1].strip().isdigit():
                continue
            own, cumulative, name = int(parts[0].split(":")[1]), int(parts[1]), parts[2].strip()
            best[name] = min(best.get(name, own), own)
            if name == "mailprov.cli":
                total = cumulative if total is None else min(total, cumulative)
    print(f"cli_startup: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"  mailprov --help: best {min(walls):.3f} s, median {sorted(walls)[len(walls) // 2]:.3f} s over {args.runs} runs (goal < 0.3 s)")
    print(f"  import mailprov.cli: best {(total or 0) / 1000:.0f} ms (everything it pulls in)")
    print("  heaviest modules by own import time (best run):")
    for name, own in sorted(best.items(), key=lambda item: -item[1])[: args.top]:
        print(f"    {own / 1000:7.1f} ms  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

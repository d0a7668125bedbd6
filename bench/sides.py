"""Each side of a benchmark runs in its own process, one after the other, so the sides never
share cores or memory; a side prints one `BENCH {json}` line that the parent reads."""

from __future__ import annotations

import json
import subprocess
import sys


def emit(result: dict) -> None:
    print("BENCH " + json.dumps(result))


def run_side(script: str, side: str, *argv: str) -> dict:
    proc = subprocess.run([sys.executable, script, "--side", side, *argv], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("BENCH ")), None)
    if proc.returncode or line is None:
        sys.exit(f"{side} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(line[6:])

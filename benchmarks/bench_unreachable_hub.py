"""How long an unreachable Hub id takes to be refused (issue 20, bug 1: 28.9 s in public mode before), and
what the person reads. The Hub is out of reach as in the tests: HF_ENDPOINT on a localhost port nobody
listens on, an empty Hub cache. Per mode (public, local), in a fresh process each:

- check: the lab call alone (what the calculator page waits for), timed after the imports;
- cli: `python -m lab memory --model ID` from the shell, start-up included, beside `python -m lab --help`
  (start-up alone) to tell the two apart. Target: the check under 5 s, the message without class names.

    .venv/bin/python benchmarks/bench_unreachable_hub.py [--model meta-llama/Llama-3.2-1B] [--endpoint URL]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import json, sys, time
import lab
from lab.errors import LabError
from lab.models.reader import read_architecture
t = time.perf_counter()
try:
    read_architecture(sys.argv[1])
    message = "(read: the Hub answered)"
except LabError as e:
    message = str(e)
print(json.dumps({"seconds": time.perf_counter() - t, "message": message}))
"""


def closed_port_endpoint() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def timed_run(args: list[str], env: dict) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    return time.perf_counter() - t, p


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="meta-llama/Llama-3.2-1B")
    ap.add_argument("--endpoint", default=None, help="HF_ENDPOINT to use (default: a closed localhost port)")
    args = ap.parse_args()
    endpoint = args.endpoint or closed_port_endpoint()
    with tempfile.TemporaryDirectory() as home:
        base = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "HF_HOME": home,
                "HF_HUB_CACHE": str(Path(home) / "hub")}
        startup, _ = timed_run(["-m", "lab", "--help"], base)
        print(f"HF_ENDPOINT={endpoint}; `python -m lab --help` (start-up alone): {startup:.1f} s")
        for mode in ("public", "local"):
            env = {**base, "QLORA_LAB_PUBLIC": "1" if mode == "public" else "0"}
            _, p = timed_run(["-c", CHECK, args.model], env)
            check = json.loads(p.stdout.strip().splitlines()[-1])
            cli, q = timed_run(["-m", "lab", "memory", "--model", args.model], env)
            print(f"{mode:>6}: check {check['seconds']:.2f} s; cli {cli:.1f} s (exit {q.returncode})")
            print(f"        {check['message']}")


if __name__ == "__main__":
    main()

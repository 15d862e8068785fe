"""How long after a signal the CLI exits, in the middle of a long x4plus tile (ncnn, one 1024 px tile).

    .venv/bin/python tests/benchmarks/bench_cancel.py [--repeats 3]

Starts `tiledsr upscale examples/sample.png` (photo-x4), waits for the stage event and 3 s more,
sends SIGINT or SIGTERM, and prints the exit code and the time from the signal to the exit.
"""
import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            sig = (signal.SIGINT, signal.SIGTERM)[i % 2]
            p = subprocess.Popen([sys.executable, "-m", "tiledsr", "upscale", str(ROOT / "examples" / "sample.png"),
                                  "-o", f"{tmp}/o.png", "--progress", "json"], stderr=subprocess.PIPE, text=True,
                                 cwd=ROOT)
            while json.loads(p.stderr.readline())["event"] != "stage":
                pass
            time.sleep(3)
            sent = time.monotonic()
            p.send_signal(sig)
            p.wait()
            print(f"{signal.Signals(sig).name}: exit {p.returncode} after {time.monotonic() - sent:.3f} s; "
                  f"output written: {Path(tmp, 'o.png').exists()}")


if __name__ == "__main__":
    main()

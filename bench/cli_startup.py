"""`curaway --help` start-up time beside a bare interpreter start, in the same run.

    python -m bench.cli_startup [--runs 10]

Output: one JSON object with the median/min wall time of each and the difference (the CLI's own cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def _time(cmd: list[str], runs: int) -> dict[str, float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        samples.append(time.perf_counter() - started)
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args(argv)
    baseline = _time([sys.executable, "-c", "pass"], args.runs)
    cli = _time([sys.executable, "-m", "curaway", "--help"], args.runs)
    result = {
        "benchmark": "cli_startup",
        "runs": args.runs,
        "baseline_python": baseline,
        "curaway_help": cli,
        "cli_own_cost_s": round(cli["median_s"] - baseline["median_s"], 4),
        "target": "curaway --help well under 1 s",
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

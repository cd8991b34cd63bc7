"""`make bench`: every benchmark with its defaults, one JSON document per benchmark."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["bench.cli_startup", "bench.dispatch_throughput", "bench.fhir_sweep", "bench.webhook_throughput"]

if __name__ == "__main__":
    for name in BENCHMARKS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            print(f"skipping {name}: not present", file=sys.stderr)
            continue
        module.main([])

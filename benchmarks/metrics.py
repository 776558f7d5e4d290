"""`python -m benchmarks.metrics`: the metric throughput benchmark under the name the search
harness's documentation uses (`benchmarks/bench_metrics.py` holds it; same options)."""

from .bench_metrics import main

if __name__ == "__main__":
    main()

"""The benchmark harness: see bench.py (run it as bench/run)."""

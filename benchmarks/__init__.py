"""Benchmarks: `python -m benchmarks.lua` measures the stock scripts server-side."""

"""Epoch-throughput benchmarks: plain pytest-benchmark functions over trainlib's engine and loaders."""

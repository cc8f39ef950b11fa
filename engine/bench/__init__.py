"""Benchmarks: per-stage ms, keystroke-to-frame latency, student vs teacher, SD-1.5 on GPU."""

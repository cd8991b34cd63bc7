"""Benchmarks: runnable modules that print JSON (never timed assertions in the test suite)."""

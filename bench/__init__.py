"""Benchmarks that print numbers (speed, memory, accuracy); results go in docs/benchmarks.md."""

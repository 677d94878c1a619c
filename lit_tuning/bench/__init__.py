"""Benchmarks behind `make bench*`: each compares variants side by side in one run and writes figures and tables."""

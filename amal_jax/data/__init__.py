"""Data sets, features, label models and teachers for the benchmarks."""

"""Learnable synthetic faces in the benchmarks' real formats."""

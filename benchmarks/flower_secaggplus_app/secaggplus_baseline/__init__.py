"""Flower's own SecAgg+ timed round by round: the baseline app of ``benchmarks/flower.py``."""

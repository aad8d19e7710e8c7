"""Drift detectors: of a model's errors (detectors.py) and of its inputs (shift.py). A
model state carries its own, so they learn and pickle with it."""

"""Experiments built on runs: comparisons, baselines, Optuna sweeps and their report, gradient coherence."""

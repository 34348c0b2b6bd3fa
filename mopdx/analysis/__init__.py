"""Analyses of runs (gradient coherence)."""

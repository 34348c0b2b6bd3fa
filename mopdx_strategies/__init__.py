"""Strategies shipped with mopdx (registered in pyproject.toml under mopdx.strategies); they use the strategy contract only."""

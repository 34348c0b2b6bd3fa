"""Running a config: one assembly for every loop, the Lightning trainer, evaluation and its callback."""

"""Training runs on disk: the recipe, the run options and config, the run directory, checkpoints, the step loop."""

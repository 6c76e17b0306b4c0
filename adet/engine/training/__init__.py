"""Training: the trainer and its loop, hooks, metrics, experiment trackers, the best model, seeding."""

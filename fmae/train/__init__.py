"""Training: one Trainer, tasks that plug into it, the optimiser and schedule, rank handling."""

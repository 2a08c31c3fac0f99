"""Training: optimizer, jitted train/eval steps, metrics, and the loop with checkpoints and exact resume."""

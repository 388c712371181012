"""Training: stage schedule and LR, the loop, checkpoint and resume, fault handling, metrics."""

"""Evaluators, separate from the trainer (big_vision's lesson): zero-shot classification and
image-text retrieval of a plain (unsharded) model. See `clipav2.eval.run.evaluate`."""

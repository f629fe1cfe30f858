"""Train state, steps, loop, optimizer, checkpoints (write side and full restore), the
ahead-of-time memory report (memory.py) and the token-cache writer (token_cache.py)."""
from arjax.train.loop import Experiment, train_and_evaluate

__all__ = ["Experiment", "train_and_evaluate"]

"""Train state, steps, loop, optimizer, checkpoints."""
from arjax.train.loop import Experiment, train_and_evaluate

__all__ = ["Experiment", "train_and_evaluate"]

"""Samplers: pure decode loops over the model, with guidance as a wrapper."""
from arjax.sampling.decode import SamplingConfig, SequentialSampler, class_grid_labels
from arjax.sampling.guidance import cfg_logits, double_labels

__all__ = ["SamplingConfig", "SequentialSampler", "class_grid_labels", "cfg_logits",
           "double_labels"]

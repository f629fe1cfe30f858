"""Samplers by name over one state, with guidance as one wrapper (arjax.sampling.base)."""
from arjax.sampling.base import SAMPLERS, Sampler, build_sampler
from arjax.sampling.config import SamplingConfig, sampling_from_config
from arjax.sampling.decode import SequentialSampler, class_grid_labels
from arjax.sampling.guidance import cfg_logits, double_labels
from arjax.sampling.orders import OrderSampler
from arjax.sampling.cached_groups import CachedGroupSampler
from arjax.sampling.cached_orders import CachedOrderSampler
from arjax.sampling.next_scale import NextScaleSampler
from arjax.sampling import next_entity  # noqa: F401  ('next_entity': xAR)
from arjax.sampling import next_frequency  # noqa: F401  ('next_frequency': FAR)
from arjax.sampling.speculative import (GSDSampler, MCSJDSampler, SJDSampler,
                                        SpeculativeOptions)
from arjax.sampling.continuous_speculative import ContinuousSJDSampler
from arjax.sampling.state import SamplerState
from arjax.sampling import diffusion_lm  # noqa: F401  (text_ar, mdlm, sdar, fast_dllm)
from arjax.sampling import two_phase  # noqa: F401  ('himar': Hi-MAR's pivots then grid)

__all__ = ["SAMPLERS", "Sampler", "build_sampler", "SamplingConfig", "sampling_from_config",
           "SequentialSampler", "OrderSampler", "CachedGroupSampler", "CachedOrderSampler",
           "SamplerState", "SJDSampler", "MCSJDSampler", "GSDSampler", "SpeculativeOptions",
           "ContinuousSJDSampler",
           "class_grid_labels", "cfg_logits", "double_labels"]

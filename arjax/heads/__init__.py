"""Heads turn a hidden state into a distribution over tokens (arjax.heads.base: the contract)."""
from arjax.heads.base import HEADS, Distribution, build_head
from arjax.heads.arinar import ARINAR, ARINARHead, GuidedARINAR
from arjax.heads.categorical import Categorical, CategoricalHead
from arjax.heads.diffusion import Diffusion, DiffusionHead, GuidedDiffusion
from arjax.heads.flow import Flow, FlowHead, GuidedFlow
from arjax.heads.gmm import GMM, GMMHead, GuidedGMM
from arjax.heads import spatial_flow  # noqa: F401  (declares FlowAR's head, model 'flowar')
from arjax.heads.shortcut import GuidedShortcut, Shortcut, ShortcutHead
from arjax.heads import global_diffusion  # noqa: F401  ('global_diffusion': Hi-MAR's DiT head)

__all__ = ["HEADS", "Distribution", "build_head", "ARINAR", "ARINARHead", "GuidedARINAR",
           "Categorical", "CategoricalHead", "Diffusion",
           "DiffusionHead", "GuidedDiffusion", "Flow", "FlowHead", "GuidedFlow", "GMM", "GMMHead",
           "GuidedGMM", "Shortcut", "ShortcutHead", "GuidedShortcut"]

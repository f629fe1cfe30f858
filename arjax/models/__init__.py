"""Generators composed from the parts, and the registry `build_model`."""
from arjax.models.registry import MODELS, build_model
from arjax.models import raster_ar  # noqa: F401  (registers 'raster_ar')
from arjax.models import ordered_ar  # noqa: F401  ('ordered_ar': RAR, RandAR, LPD, PAR, MaskGIT)
from arjax.models import nar  # noqa: F401  ('nar')
from arjax.models import arpg  # noqa: F401  ('arpg')
from arjax.models import var  # noqa: F401  ('var': next-scale prediction)
from arjax.models import hart  # noqa: F401  ('hart': VAR + residual diffusion head)
from arjax.models import flexvar  # noqa: F401  ('flexvar': non-residual, any scale list)
from arjax.models import hmar  # noqa: F401  ('hmar': Markovian scales + masked refinement)
from arjax.models import ardm  # noqa: F401  ('ardm': order-agnostic AR diffusion)
from arjax.models import autoencoder  # noqa: F401  ('autoencoder': VQ/FSQ/LFQ/VAR/KL tokenizers)
from arjax.models import mar  # noqa: F401  ('mar': masked AR over continuous tokens)
from arjax.models import himar  # noqa: F401  ('himar': Hi-MAR, pivots then grid)
from arjax.models import xar  # noqa: F401  ('xar': next-entity prediction, noisy-context flow)
from arjax.models import flowar  # noqa: F401  ('flowar': next-scale AR + per-scale flow matching)
from arjax.models import far  # noqa: F401  ('far': next-frequency prediction, continuous tokens)
from arjax.models import diffusion_lm  # noqa: F401  ("diffusion_lm": AR, MDLM, BD3-LM on text)

__all__ = ["MODELS", "build_model"]

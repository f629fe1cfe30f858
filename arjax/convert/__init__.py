"""Converters from released checkpoints of the papers into arjax workdirs.

A converter maps a released state dict (read without torch by
`arjax.evaluate.inception.read_state_dict`) onto the parameters of the arjax model that a
paper-size config builds, checks every tensor's name and shape, and writes a workdir
(config.json + an Orbax checkpoint at step 0) that `arjax.sample` and `arjax.evaluate` load like
any trained run. Registered by name: `python -m arjax.convert NAME ...`.
"""
from arjax.convert.registry import CONVERTERS
from arjax.convert import llamagen  # noqa: F401  (registers 'llamagen')
from arjax.convert import var  # noqa: F401  (registers 'var')
from arjax.convert import mar  # noqa: F401  (registers 'mar')
from arjax.convert import mar_vae  # noqa: F401  (registers 'mar_vae')
from arjax.convert import far  # noqa: F401  (registers 'far')
from arjax.convert import sdar  # noqa: F401  (registers 'sdar')

__all__ = ["CONVERTERS"]

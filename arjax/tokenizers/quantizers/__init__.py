"""Quantizers between a tokenizer's encoder and decoder, named by `config.model.quantizer.name`.

    from arjax.tokenizers import quantizers
    qcfg = quantizers.default_config("vq", codebook_size=512, code_dim=8)
    q = quantizers.build_quantizer(qcfg, in_channels=64, rngs=nnx.Rngs(0))
    out = q(z, train=True)          # QuantizerOutput(z_q, tokens, loss, metrics)

Registered: 'vq' (VQ-VAE/VQGAN/LlamaGen), 'fsq' (Mentzer et al. 2023), 'lfq' (MAGVIT-v2),
'multiscale' (VAR), 'kl' (LDM/MAR/GIVT diagonal Gaussian). Every entry is a class with a
`FIELDS` table {field: (default, comment)}; unknown config fields fail with their names.
"""
from __future__ import annotations

import ml_collections
from flax import nnx

from arjax.registry import Registry
from arjax.tokenizers.quantizers.base import (QuantizerOutput, config_from_fields,
                                              fields_dataclass, read_fields)
from arjax.tokenizers.quantizers.fsq import FSQ
from arjax.tokenizers.quantizers.kl import DiagonalGaussian
from arjax.tokenizers.quantizers.lfq import LFQ
from arjax.tokenizers.quantizers.multiscale import MultiScaleVQ
from arjax.tokenizers.quantizers.vq import VectorQuantizer

QUANTIZERS: Registry = Registry("quantizer")
for _name, _cls in (("vq", VectorQuantizer), ("fsq", FSQ), ("lfq", LFQ),
                    ("multiscale", MultiScaleVQ), ("kl", DiagonalGaussian)):
  QUANTIZERS.register(_name, fields=fields_dataclass(_name, _cls.FIELDS))(_cls)


def default_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model.quantizer` for quantizer `name`: its fields at their defaults + overrides."""
  return config_from_fields(name, QUANTIZERS.get(name, field="model.quantizer.name").FIELDS,
                            **overrides)


def build_quantizer(qcfg: ml_collections.ConfigDict, *, in_channels: int, rngs: nnx.Rngs):
  """Builds the quantizer named by `qcfg.name` reading encoder latents of `in_channels`."""
  cls = QUANTIZERS.get(qcfg.name, field="model.quantizer.name")
  return cls(in_channels, rngs=rngs, **read_fields(qcfg, qcfg.name, cls.FIELDS))


__all__ = ["QUANTIZERS", "QuantizerOutput", "build_quantizer", "default_config", "DiagonalGaussian",
           "FSQ", "LFQ", "MultiScaleVQ", "VectorQuantizer"]

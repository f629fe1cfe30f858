"""MAR's KL-16 VAE (Li et al. 2024; LTH14/mar: kl16.ckpt, the LDM AutoencoderKL of
models/vae.py) -> an arjax tokenizer run of `configs/tokenizers/mar_kl16.py` (model
'autoencoder', quantizer 'kl', no discriminator).

  python -m arjax.convert mar_vae --checkpoint kl16.ckpt --workdir W     # the VAE alone
  python -m arjax.convert mar --checkpoint checkpoint-last.pth --vae kl16.ckpt --size B \
      --workdir W                    # the generator in W, the VAE in W/tokenizer (arjax.convert.mar)

The file is read without torch (`arjax.evaluate.inception.read_state_dict`; MAR's loader takes
its 'model' entry, as here). The run is what a generator's `tokenizer.checkpoint` names and what
`python -m arjax.tokenize` encodes a data set with: `encode` gives the posterior mean times
0.2325 (MAR's tokens), `decode` divides by it and runs the decoder.

PyTorch Conv2d weights [out, in, kh, kw] -> arjax kernels [kh, kw, in, out]. Names:

  encoder.conv_in / norm_out / conv_out [2Z, C, 3, 3]   -> encoder.conv_in / norm_out / conv_out
  encoder.down.i.block.j.{norm1, conv1, norm2, conv2, nin_shortcut}
                                                      -> encoder.levels.i.blocks.j.{..., shortcut}
  encoder.down.i.attn.j.{norm, q, k, v, proj_out}     -> encoder.levels.i.attns.j.{..., proj}
  encoder.down.i.downsample.conv                      -> encoder.levels.i.resample.conv
  encoder.mid.{block_1, attn_1, block_2}              -> encoder.mid.{block1, attn, block2}
  decoder.conv_in, decoder.mid.*, decoder.norm_out, decoder.conv_out -> the same in decoder
  decoder.up.i.block.j.* (i = level; arjax runs the levels lowest first)
                                                      -> decoder.levels.(L-1-i).blocks.j.*
  decoder.up.i.upsample.conv                          -> decoder.levels.(L-1-i).resample.conv
  quant_conv [2Z, 2Z, 1, 1] / post_quant_conv [Z, Z, 1, 1] -> quant_conv / post_quant_conv
  GroupNorm weight / bias                             -> scale / bias

KL-16 (ch 128, ch_mult 1 1 2 2 4, 2 blocks per level, attention after each block of the lowest
encoder level and in both middles, none in the decoder's levels, Z = 16) is what
configs/tokenizers/mar_kl16.py builds. Entries under `loss.` (LDM's training loss: LPIPS and the
discriminator), if a file carries them, are not part of the autoencoder and are skipped with a
log line giving their count; any other tensor that is missing, left over or of another shape
fails the conversion, every one named in the message. Parity with the official code:
tests/convert/test_mar_vae.py (tests/convert/fixtures/README.md).

Legend: C image channels, Z latent channels, L levels (len(ch_mult)).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Sequence

import numpy as np

from arjax.convert.registry import CONVERTERS
from arjax.convert.var import _Reader

CONFIG = "configs/tokenizers/mar_kl16.py"
TRAINING_LOSS_PREFIX = "loss."   # LDM's LPIPSWithDiscriminator, saved beside the model in training.
_log = logging.getLogger("arjax.convert")


def mar_vae_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """MAR KL-16 VAE state dict -> arjax Autoencoder parameters (nested dict of float32 arrays)
  for the model `config` builds. Every tensor is checked; all problems (missing, differing shape,
  left over) are reported in one ValueError."""
  m = config.model
  if m.name != "autoencoder" or m.quantizer.name != "kl" or m.get("encoder", "conv") != "conv":
    raise ValueError("MAR's KL-16 VAE converts into model.name='autoencoder' with "
                     "model.encoder='conv' and model.quantizer.name='kl', got "
                     f"{m.name!r} / {m.get('encoder')!r} / {m.quantizer.get('name')!r}")
  if m.loss.disc_weight:
    raise ValueError("MAR's KL-16 VAE converts with model.loss.disc_weight=0 (the checkpoint "
                     "holds no discriminator)")
  loss_keys = [k for k in state_dict if k.startswith(TRAINING_LOSS_PREFIX)]
  if loss_keys:
    _log.info("skipping %d training-loss tensors (%s*: LPIPS / discriminator)", len(loss_keys),
              TRAINING_LOSS_PREFIX)
  r = _Reader({k: v for k, v in state_dict.items() if not k.startswith(TRAINING_LOSS_PREFIX)},
              "KL-16 VAE checkpoint")
  ch, mult, nrb = m.ch, list(m.ch_mult), m.num_res_blocks
  z, d = m.z_channels, m.quantizer.latent_dim
  last = len(mult) - 1

  res = r.res_block

  def attn(key, c):
    return {"norm": r.norm(key + ".norm", c),
            **{n: r.conv(f"{key}.{n}", c, c, 1) for n in "qkv"},
            "proj": r.conv(key + ".proj_out", c, c, 1)}

  def mid(key, c):
    return r.mid_block(key, c, attn if m.mid_attn else None)

  def level(blocks, attns, resample):
    lv = {"blocks": dict(enumerate(blocks))}
    if attns:
      lv["attns"] = dict(enumerate(attns))
    if resample is not None:
      lv["resample"] = {"conv": resample}
    return lv

  # The encoder's last conv gives the moments' channels before quant_conv: 2Z (LDM's double_z).
  z_enc = 2 * z if m.quant_conv else 2 * d
  enc_levels, c_in = {}, ch
  for i, mu in enumerate(mult):
    c_out, blocks, attns = ch * mu, [], []
    for j in range(nrb):
      blocks.append(res(f"encoder.down.{i}.block.{j}", c_in, c_out))
      c_in = c_out
      if i == last and m.enc_attn:
        attns.append(attn(f"encoder.down.{i}.attn.{j}", c_in))
    down = r.conv(f"encoder.down.{i}.downsample.conv", c_in, c_in, 3) if i != last else None
    enc_levels[i] = level(blocks, attns, down)
  encoder = {"conv_in": r.conv("encoder.conv_in", m.channels, ch, 3), "levels": enc_levels,
             "mid": mid("encoder.mid", c_in), "norm_out": r.norm("encoder.norm_out", c_in),
             "conv_out": r.conv("encoder.conv_out", c_in, z_enc, 3)}

  z_dec = z if m.quant_conv else d
  c_in = ch * mult[-1]
  dec_levels = {}
  for n, i in enumerate(reversed(range(len(mult)))):
    c_out, blocks, attns = ch * mult[i], [], []
    for j in range(nrb + 1):
      blocks.append(res(f"decoder.up.{i}.block.{j}", c_in, c_out))
      c_in = c_out
      if i == last and m.dec_attn:
        attns.append(attn(f"decoder.up.{i}.attn.{j}", c_in))
    up = r.conv(f"decoder.up.{i}.upsample.conv", c_in, c_in, 3) if i != 0 else None
    dec_levels[n] = level(blocks, attns, up)
  decoder = {"conv_in": r.conv("decoder.conv_in", z_dec, ch * mult[-1], 3),
             "mid": mid("decoder.mid", ch * mult[-1]), "levels": dec_levels,
             "norm_out": r.norm("decoder.norm_out", c_in),
             "conv_out": r.conv("decoder.conv_out", c_in, m.channels, 3)}
  params = {"encoder": encoder, "decoder": decoder}
  if m.quant_conv:
    k = m.quant_conv
    params["quant_conv"] = r.conv("quant_conv", z_enc, 2 * d, k)
    params["post_quant_conv"] = r.conv("post_quant_conv", d, z, k)
  r.finish(hint=" (another VAE shape: check model.ch, ch_mult, num_res_blocks, z_channels, "
           "quantizer.latent_dim, enc_attn / dec_attn / mid_attn)")
  return params


def tokenizer_config(overrides: Sequence[str] = ()):
  """The VAE's config: configs/tokenizers/mar_kl16.py without the discriminator."""
  from arjax.config import load_config
  return load_config(CONFIG, ["model.loss.disc_weight=0.0"] + list(overrides))


def read_vae_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """The state dict of kl16.ckpt (its 'model' entry), or of a bare state dict / .npz."""
  from arjax.evaluate.inception import read_state_dict
  if not path or not os.path.isfile(path):
    raise FileNotFoundError(f"KL-16 VAE checkpoint {path!r} not found (kl16.ckpt of the LTH14/mar "
                            "README)")
  return read_state_dict(path)


def convert_mar_vae(checkpoint: str, workdir: str, overrides: Sequence[str] = ()) -> str:
  """Reads kl16.ckpt and writes a tokenizer run into `workdir`; returns the workdir."""
  from arjax.convert.workdir import write_workdir
  config = tokenizer_config(overrides)
  params = mar_vae_params(read_vae_checkpoint(checkpoint), config)
  return write_workdir(config, params, workdir, source=os.path.abspath(checkpoint))


@CONVERTERS.register("mar_vae")
def _cli(args):
  for flag in ("vae", "size", "config"):
    if getattr(args, flag, None):
      raise ValueError(f"mar_vae: --{flag} does not apply (the VAE is --checkpoint kl16.ckpt; "
                       "its config is --config.FIELD=VALUE overrides of "
                       f"{CONFIG})")
  return convert_mar_vae(args.checkpoint, args.workdir, list(args.overrides)
                         + list(getattr(args, "vae_override", ()) or ()))

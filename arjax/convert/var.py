"""VAR's released checkpoints (Tian et al. 2024; FoundationVision/VAR: vae_ch160v4096z32.pth and
var_d{16,20,24,30}.pth) -> two arjax workdirs: the multi-scale VQ-VAE as a tokenizer run
(`configs/tokenizers/var_vqvae.py`, model 'autoencoder') and the generator
(`configs/imagenet256/var.py:depth=d`, model 'var') whose tokenizer.checkpoint is that run.

  python -m arjax.convert var --checkpoint var_d16.pth --vae vae_ch160v4096z32.pth --size 16 \
      --workdir W          # writes W (generator) and W/tokenizer (VQ-VAE)

PyTorch layouts: Conv2d weights [out, in, kh, kw] -> arjax kernels [kh, kw, in, out]; Linear
weights [out, in] -> kernels [in, out]. Names:

VQ-VAE (models/vqvae.py, basic_vae.py, quant.py)
  encoder.conv_in / conv_out / norm_out                -> encoder.conv_in / conv_out / norm_out
  encoder.down.i.block.j.{norm1,conv1,norm2,conv2,nin_shortcut}
                                                       -> encoder.levels.i.blocks.j.{..., shortcut}
  encoder.down.i.attn.j.{norm, qkv [3C, C, 1, 1], proj_out}
                                                       -> encoder.levels.i.attns.j.{norm, q/k/v, proj}
  encoder.down.i.downsample.conv                       -> encoder.levels.i.resample.conv
  encoder.mid.{block_1, attn_1, block_2}               -> encoder.mid.{block1, attn, block2}
  decoder.up.i.* (i = level; arjax runs levels lowest first) -> decoder.levels.(L-1-i).*
  decoder.up.i.upsample.conv                           -> decoder.levels.(L-1-i).resample.conv
  quant_conv / post_quant_conv                         -> quant_conv / post_quant_conv
  quantize.embedding.weight [V, Dv]                    -> quantizer.codebook
  quantize.quant_resi.qresi_ls.i                       -> quantizer.phis.i
  GroupNorm weight / bias                              -> scale / bias
  (buffer quantize.ema_vocab_hit_SV carries no parameter)

VAR (models/var.py, basic_var.py; shared_aln=False, attn_l2_norm=True)
  word_embed, class_emb.weight, pos_start [1, h_1^2, C], pos_1LC [1, N, C], lvl_embed.weight
                  -> word_embed, class_embed, pos_start, pos_embed, level_embed
  blocks.i.ada_lin.1                  -> blocks.i.ada_lin
  blocks.i.attn.mat_qkv.weight        -> blocks.i.qkv.kernel
  blocks.i.attn.{q_bias, v_bias}      -> blocks.i.{q_bias, v_bias}
  blocks.i.attn.scale_mul_1H11        -> blocks.i.scale_mul [H]
  blocks.i.attn.proj, blocks.i.ffn.fc1/fc2 -> blocks.i.proj, fc1, fc2
  head_nm.ada_lin.1, head             -> head.ada_lin, head.proj
  (buffers lvl_1L, attn_bias_for_masking, blocks.i.attn.zero_k_bias carry no parameter)

Parity with the official code: tests/convert/test_var.py (a tiny configuration run through
VAR's own code, tests/convert/fixtures/README.md).

Legend: C width, N tokens, V vocabulary, Dv code dim, L levels of the conv encoder/decoder.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping

import numpy as np

from arjax.convert.registry import CONVERTERS

VAE_BUFFERS = ("quantize.ema_vocab_hit_SV",)
VAR_BUFFERS = ("lvl_1L", "attn_bias_for_masking")


class _Reader:
  """Takes tensors out of a state dict by name and shape; collects every problem."""

  def __init__(self, sd: Mapping[str, np.ndarray], what: str):
    self.sd, self.what, self.used, self.problems = sd, what, set(), []

  def get(self, key: str, shape) -> np.ndarray:
    self.used.add(key)
    if key not in self.sd:
      self.problems.append(f"missing {key} {tuple(shape)}")
      return np.zeros(shape, np.float32)
    value = np.asarray(self.sd[key])
    if value.shape != tuple(shape):
      self.problems.append(f"{key}: checkpoint {value.shape}, config {tuple(shape)}")
      return np.zeros(shape, np.float32)
    return value.astype(np.float32)

  def linear(self, key: str, n_in: int, n_out: int, bias: bool = True) -> Dict:
    out = {"kernel": self.get(key + ".weight", (n_out, n_in)).T}
    if bias:
      out["bias"] = self.get(key + ".bias", (n_out,))
    return out

  def conv(self, key: str, n_in: int, n_out: int, k: int) -> Dict:
    w = self.get(key + ".weight", (n_out, n_in, k, k))
    return {"kernel": w.transpose(2, 3, 1, 0), "bias": self.get(key + ".bias", (n_out,))}

  def norm(self, key: str, c: int) -> Dict:
    return {"scale": self.get(key + ".weight", (c,)), "bias": self.get(key + ".bias", (c,))}

  def res_block(self, key: str, c_in: int, c_out: int) -> Dict:
    """An LDM / VQGAN ResnetBlock (norm1, conv1, norm2, conv2, nin_shortcut when c_in != c_out)."""
    out = {"norm1": self.norm(key + ".norm1", c_in),
           "conv1": self.conv(key + ".conv1", c_in, c_out, 3),
           "norm2": self.norm(key + ".norm2", c_out),
           "conv2": self.conv(key + ".conv2", c_out, c_out, 3)}
    if c_in != c_out:
      out["shortcut"] = self.conv(key + ".nin_shortcut", c_in, c_out, 1)
    return out

  def mid_block(self, key: str, c: int, attn=None) -> Dict:
    """An LDM / VQGAN middle block: ResnetBlock, attention (when attn(key, c) is given),
    ResnetBlock."""
    out = {"block1": self.res_block(key + ".block_1", c, c),
           "block2": self.res_block(key + ".block_2", c, c)}
    if attn is not None:
      out["attn"] = attn(key + ".attn_1", c)
    return out

  def finish(self, skip=(), hint: str = "") -> None:
    extra = sorted(k for k in self.sd if k not in self.used
                   and not any(k == s or k.endswith("." + s) for s in skip))
    problems = self.problems + [f"unexpected {k} {np.shape(self.sd[k])}" for k in extra]
    if problems:
      more = f" ... ({len(problems)} in all)" if len(problems) > 12 else ""
      raise ValueError(f"{self.what} does not fit the config{hint}: " + "; ".join(problems[:12])
                       + more)


def vae_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """VAR VQ-VAE state dict -> arjax Autoencoder parameters (nested dict of float32 arrays)."""
  m = config.model
  if m.name != "autoencoder" or m.quantizer.name != "multiscale":
    raise ValueError("VAR's VQ-VAE converts into model.name='autoencoder' with "
                     f"model.quantizer.name='multiscale', got {m.name!r} / {m.quantizer.name!r}")
  if not m.quant_conv or m.loss.disc_weight:
    raise ValueError("VAR's VQ-VAE needs model.quant_conv > 0 and model.loss.disc_weight=0 (the "
                     "checkpoint holds no discriminator)")
  r = _Reader(state_dict, "VQ-VAE checkpoint")
  q = m.quantizer
  ch, mult, nrb, z = m.ch, list(m.ch_mult), m.num_res_blocks, m.z_channels
  last = len(mult) - 1

  res = r.res_block

  def attn(key, c):
    w = r.get(key + ".qkv.weight", (3 * c, c, 1, 1)).transpose(2, 3, 1, 0)
    b = r.get(key + ".qkv.bias", (3 * c,))
    return {"norm": r.norm(key + ".norm", c),
            **{n: {"kernel": w[..., i * c:(i + 1) * c], "bias": b[i * c:(i + 1) * c]}
               for i, n in enumerate("qkv")},
            "proj": r.conv(key + ".proj_out", c, c, 1)}

  def mid(key, c):
    return r.mid_block(key, c, attn if m.mid_attn else None)

  enc_levels, c_in = {}, ch
  for i, mu in enumerate(mult):
    c_out = ch * mu
    lv = {"blocks": {}, "attns": {}}
    for j in range(nrb):
      lv["blocks"][j] = res(f"encoder.down.{i}.block.{j}", c_in, c_out)
      c_in = c_out
      if i == last and m.enc_attn:
        lv["attns"][j] = attn(f"encoder.down.{i}.attn.{j}", c_in)
    if i != last:
      lv["resample"] = {"conv": r.conv(f"encoder.down.{i}.downsample.conv", c_in, c_in, 3)}
    if not lv["attns"]:
      del lv["attns"]
    enc_levels[i] = lv
  encoder = {"conv_in": r.conv("encoder.conv_in", m.channels, ch, 3), "levels": enc_levels,
             "mid": mid("encoder.mid", c_in), "norm_out": r.norm("encoder.norm_out", c_in),
             "conv_out": r.conv("encoder.conv_out", c_in, z, 3)}

  c_in = ch * mult[-1]
  dec_levels = {}
  for n, i in enumerate(reversed(range(len(mult)))):
    c_out = ch * mult[i]
    lv = {"blocks": {}, "attns": {}}
    for j in range(nrb + 1):
      lv["blocks"][j] = res(f"decoder.up.{i}.block.{j}", c_in, c_out)
      c_in = c_out
      if i == last and m.dec_attn:
        lv["attns"][j] = attn(f"decoder.up.{i}.attn.{j}", c_in)
    if i != 0:
      lv["resample"] = {"conv": r.conv(f"decoder.up.{i}.upsample.conv", c_in, c_in, 3)}
    if not lv["attns"]:
      del lv["attns"]
    dec_levels[n] = lv
  decoder = {"conv_in": r.conv("decoder.conv_in", z, ch * mult[-1], 3),
             "mid": mid("decoder.mid", ch * mult[-1]), "levels": dec_levels,
             "norm_out": r.norm("decoder.norm_out", c_in),
             "conv_out": r.conv("decoder.conv_out", c_in, m.channels, 3)}
  if z != q.code_dim:
    raise ValueError(f"VAR's VQ-VAE quantizes the latent directly: model.z_channels={z} must equal "
                     f"model.quantizer.code_dim={q.code_dim}")
  k = m.quant_conv
  params = {"encoder": encoder, "decoder": decoder,
            "quant_conv": r.conv("quant_conv", z, z, k),
            "post_quant_conv": r.conv("post_quant_conv", z, z, k),
            "quantizer": {"codebook": r.get("quantize.embedding.weight",
                                            (q.codebook_size, q.code_dim)),
                          "phis": {i: r.conv(f"quantize.quant_resi.qresi_ls.{i}", q.code_dim,
                                             q.code_dim, 3) for i in range(q.num_phi)}}}
  r.finish(skip=VAE_BUFFERS, hint=" (another VQ-VAE shape: check model.ch, ch_mult, "
           "z_channels, quantizer.codebook_size)")
  return params


def var_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """VAR generator state dict -> arjax VAR parameters (nested dict of float32 arrays). A
  checkpoint of another depth, width or scale list fails listing every differing tensor."""
  m = config.model
  if m.name != "var":
    raise ValueError(f"VAR checkpoints convert into model.name='var', got {m.name!r}")
  from arjax.orders.scales import ScaleOrder
  order = ScaleOrder(config.order.scales)
  c = m.width or 64 * m.depth
  h = m.num_heads or m.depth
  f = int(round(c * m.mlp_ratio))
  v = config.tokenizer.vocab_size
  r = _Reader(state_dict, f"VAR checkpoint (config: depth {m.depth}, width {c})")
  blocks = {}
  for i in range(m.depth):
    p = f"blocks.{i}."
    blocks[i] = {
        "ada_lin": r.linear(p + "ada_lin.1", c, 6 * c),
        "qkv": {"kernel": r.get(p + "attn.mat_qkv.weight", (3 * c, c)).T},
        "q_bias": r.get(p + "attn.q_bias", (c,)), "v_bias": r.get(p + "attn.v_bias", (c,)),
        "scale_mul": r.get(p + "attn.scale_mul_1H11", (1, h, 1, 1)).reshape(h),
        "proj": r.linear(p + "attn.proj", c, c),
        "fc1": r.linear(p + "ffn.fc1", c, f), "fc2": r.linear(p + "ffn.fc2", f, c)}
  params = {
      "word_embed": r.linear("word_embed", m.code_dim, c),
      "class_embed": r.get("class_emb.weight", (m.num_classes + 1, c)),
      "pos_start": r.get("pos_start", (1, order.scales[0] ** 2, c))[0],
      "pos_embed": r.get("pos_1LC", (1, order.num_tokens, c))[0],
      "level_embed": r.get("lvl_embed.weight", (len(order.scales), c)),
      "blocks": blocks,
      "head": {"ada_lin": r.linear("head_nm.ada_lin.1", c, 2 * c),
               "proj": r.linear("head", c, v)},
  }
  r.finish(skip=VAR_BUFFERS + ("zero_k_bias",), hint=" (a checkpoint of another depth? "
           "--size must be the d of var_d{d}.pth)")
  return params


def tokenizer_config(overrides=()):
  """The VQ-VAE's config: configs/tokenizers/var_vqvae.py without the discriminator."""
  from arjax.config import load_config
  return load_config("configs/tokenizers/var_vqvae.py", ["model.loss.disc_weight=0.0"]
                     + list(overrides))


def convert_var(checkpoint: str, vae: str, workdir: str, size: str = "16",
                config_path: str = "configs/imagenet256/var.py", overrides=(),
                vae_overrides=()) -> str:
  """Reads var_d{size}.pth and the VQ-VAE; writes `workdir/tokenizer` (VQ-VAE run) and `workdir`
  (generator, tokenizer.checkpoint = workdir/tokenizer). Returns the generator workdir."""
  from arjax.config import load_config
  from arjax.convert.workdir import write_workdir
  from arjax.evaluate.inception import read_state_dict
  for path, what in ((checkpoint, "VAR checkpoint (e.g. var_d16.pth)"),
                     (vae, "VQ-VAE checkpoint (vae_ch160v4096z32.pth, --vae)")):
    if not path or not os.path.isfile(path):
      raise FileNotFoundError(f"{what} {path!r} not found")
  tok_dir = os.path.join(workdir, "tokenizer")
  tconfig = tokenizer_config(vae_overrides)
  write_workdir(tconfig, vae_params(read_state_dict(vae), tconfig), tok_dir,
                source=os.path.abspath(vae))
  config = load_config(f"{config_path}:depth={size}",
                       [f"tokenizer.checkpoint={os.path.abspath(tok_dir)}"] + list(overrides))
  params = var_params(read_state_dict(checkpoint), config)
  return write_workdir(config, params, workdir, source=os.path.abspath(checkpoint))


@CONVERTERS.register("var")
def _cli(args):
  return convert_var(args.checkpoint, getattr(args, "vae", None), args.workdir, args.size or "16",
                     args.config or "configs/imagenet256/var.py", args.overrides,
                     getattr(args, "vae_override", ()))

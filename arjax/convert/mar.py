"""MAR's released checkpoints (Li et al. 2024; LTH14/mar: mar_{base,large,huge}/checkpoint-last.pth)
-> an arjax workdir of `configs/imagenet256/mar.py:size=B|L|H` (model 'mar', diffusion head).

  python -m arjax.convert mar --checkpoint checkpoint-last.pth --size B --workdir W
  python -m arjax.convert mar --checkpoint checkpoint-last.pth --vae kl16.ckpt --size B \
      --workdir W          # writes W (generator) and W/tokenizer (the KL-16 VAE)

The file is read without torch. MAR's training checkpoint holds {'model', 'model_ema', ...}; the
EMA weights are what MAR evaluates and samples with, so they are converted when present ('model'
otherwise; a bare state dict or an .npz of one also works). The generator's tokens are KL-16
latents: the config's tokenizer is 'cached' (latent_dim 16). With `--vae kl16.ckpt` the VAE is
converted too (arjax.convert.mar_vae) into W/tokenizer, a tokenizer run of
configs/tokenizers/mar_kl16.py, and the generator's `tokenizer.checkpoint` names it, so
`arjax.load`, `arjax.sample` and `arjax.evaluate` decode samples to pixels (posterior-mean
latents x 0.2325 as MAR's tokens; decoding divides by 0.2325 as MAR's `vae.decode(tokens /
0.2325)`). Without it the generator's samples stay latents.

PyTorch Linear weights [out, in] -> arjax kernels [in, out]. Names (timm ViT blocks):

  class_emb.weight [C, D] + fake_latent [1, D]   -> class_embed.embedding [C + 1, D]
  z_proj, z_proj_ln                              -> z_proj, z_proj_ln (LayerNorm weight -> scale)
  encoder_pos_embed_learned [1, P + N, D]        -> encoder_pos [P + N, D]
  encoder_blocks.i.norm1 / norm2                 -> encoder.blocks.i.attn_norm / mlp_norm
  encoder_blocks.i.attn.qkv [3D, D] (+ bias)     -> encoder.blocks.i.attn.wq / wk / wv [D, H, K]
  encoder_blocks.i.attn.proj [D, D]              -> encoder.blocks.i.attn.wo [H, K, D]
  encoder_blocks.i.mlp.fc1 / fc2                 -> encoder.blocks.i.mlp.fc1 / fc2
  encoder_norm                                   -> encoder.norm
  decoder_embed, mask_token [1, 1, Dd], decoder_pos_embed_learned, decoder_blocks.i.*,
  decoder_norm, diffusion_pos_embed_learned [1, N, Dd]
                                                 -> decoder_embed, mask_token [Dd], decoder_pos,
                                                    decoder.blocks.i.*, decoder.norm, diffusion_pos
  diffloss.net.time_embed.mlp.0 / .2             -> head.net.time_fc1 / time_fc2
  diffloss.net.cond_embed / input_proj           -> head.net.cond_embed / input_proj
  diffloss.net.res_blocks.i.{in_ln, mlp.0, mlp.2, adaLN_modulation.1}
                                                 -> head.net.blocks.i.{norm, fc1, fc2, ada}
  diffloss.net.final_layer.{adaLN_modulation.1, linear} -> head.net.final_ada / final

A checkpoint whose shapes differ from the config (another --size, patch size, head width or
depth, latent size) fails with one message listing every differing tensor. Parity with the
official code: tests/convert/test_mar.py (tests/convert/fixtures/README.md).

Legend: C classes, D encoder width, Dd decoder width, H heads, K head dim, P buffer slots,
N tokens.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional

import numpy as np

from arjax.convert.registry import CONVERTERS


class _Reader:
  """Takes tensors out of a state dict by name and shape; collects every problem."""

  def __init__(self, sd: Mapping[str, np.ndarray]):
    self.sd, self.used, self.problems = sd, set(), []

  def get(self, key: str, shape) -> np.ndarray:
    self.used.add(key)
    if key not in self.sd:
      self.problems.append(f"missing {key} {tuple(shape)}")
      return np.zeros(shape, np.float32)
    value = np.asarray(self.sd[key])
    if value.shape != tuple(shape):
      self.problems.append(f"{key}: checkpoint {tuple(value.shape)}, config {tuple(shape)}")
      return np.zeros(shape, np.float32)
    return value.astype(np.float32)

  def linear(self, key: str, n_in: int, n_out: int) -> Dict:
    return {"kernel": self.get(key + ".weight", (n_out, n_in)).T,
            "bias": self.get(key + ".bias", (n_out,))}

  def norm(self, key: str, n: int) -> Dict:
    return {"scale": self.get(key + ".weight", (n,)), "bias": self.get(key + ".bias", (n,))}

  def finish(self, paper: str, hint: str) -> None:
    """Raises one ValueError listing every problem (missing, differing shape, left over)."""
    leftover = sorted(k for k in self.sd if k not in self.used)
    problems = self.problems + [f"unexpected {k} {tuple(np.shape(self.sd[k]))}"
                                for k in leftover]
    if problems:
      raise ValueError(f"{paper} checkpoint does not match the config ({len(problems)} tensors; "
                       f"{hint}): " + "; ".join(problems))


def _vit_blocks(r: _Reader, prefix: str, layers: int, dim: int, heads: int, hidden: int) -> Dict:
  k = dim // heads
  blocks = {}
  for i in range(layers):
    p = f"{prefix}.{i}."
    qkv_w = r.get(p + "attn.qkv.weight", (3 * dim, dim))
    qkv_b = r.get(p + "attn.qkv.bias", (3 * dim,))
    # timm splits qkv as [3, H, K] along the output axis.
    attn = {}
    for j, name in enumerate(("wq", "wk", "wv")):
      attn[name] = {"kernel": qkv_w[j * dim:(j + 1) * dim].T.reshape(dim, heads, k),
                    "bias": qkv_b[j * dim:(j + 1) * dim].reshape(heads, k)}
    attn["wo"] = {"kernel": r.get(p + "attn.proj.weight", (dim, dim)).T.reshape(heads, k, dim),
                  "bias": r.get(p + "attn.proj.bias", (dim,))}
    blocks[i] = {"attn": attn, "attn_norm": r.norm(p + "norm1", dim),
                 "mlp": {"fc1": r.linear(p + "mlp.fc1", dim, hidden),
                         "fc2": r.linear(p + "mlp.fc2", hidden, dim)},
                 "mlp_norm": r.norm(p + "norm2", dim)}
  return blocks


def mar_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """MAR state dict -> arjax 'mar' parameters (nested dict of float32 numpy arrays) for the model
  `config` builds (diffusion head). Every tensor is checked; all problems (missing, differing
  shape, left over) are reported in one ValueError."""
  r = _Reader(state_dict)
  params = mar_tree(r, config, "mar", "MAR")
  r.finish("MAR", "wrong --size, head width/depth, latent size or buffer?")
  return params


def mar_tree(r: _Reader, config, model_name: str, paper: str, class_rows: int = 0,
             fields_cls=None) -> Dict:
  """The MAR part of a state dict read through `r` (also FAR's, arjax.convert.far): the arjax
  parameter tree of `config`'s model `model_name` (its config fields `fields_cls`, default
  MARFields) with the diffusion head. class_rows > 0: the checkpoint's class table has that many
  rows (FAR's is always 1000), of which the first model.num_classes are taken."""
  from arjax.models.mar import MARFields, decoder_config
  from arjax.models.registry import model_fields
  from arjax.nn.transformer import TransformerConfig
  from arjax.heads.base import head_node
  m = config.model
  if m.name != model_name:
    raise ValueError(f"{paper} checkpoints convert into model.name={model_name!r}, got "
                     f"{m.name!r}")
  if head_node(config)["name"] != "diffusion":
    raise ValueError(f"{paper} checkpoints hold the diffusion head; config has model.head.name="
                     f"{head_node(config)['name']!r}")
  f = model_fields(fields_cls or MARFields, config)
  if class_rows and f.num_classes > class_rows:
    raise ValueError(f"model.num_classes={f.num_classes}: the {paper} checkpoint's class table "
                     f"has {class_rows} rows")
  enc = TransformerConfig.from_config(m.backbone)
  dec = decoder_config(enc, f)
  t = config.tokenizer
  c = int(t.get("latent_dim", 0) or t.get("channels", 0))
  n = int(t.grid) ** 2
  p, d, dd = f.buffer_size, enc.dim, dec.dim
  hw, hd = int(m.head.width), int(m.head.depth)
  table = (r.get("class_emb.weight", (class_rows, d))[:f.num_classes] if class_rows
           else r.get("class_emb.weight", (f.num_classes, d)))
  class_embed = np.concatenate([table, r.get("fake_latent", (1, d))], 0)
  head = {
      "time_fc1": r.linear("diffloss.net.time_embed.mlp.0", 256, hw),
      "time_fc2": r.linear("diffloss.net.time_embed.mlp.2", hw, hw),
      "cond_embed": r.linear("diffloss.net.cond_embed", dd, hw),
      "input_proj": r.linear("diffloss.net.input_proj", c, hw),
      "blocks": {i: {"norm": r.norm(f"diffloss.net.res_blocks.{i}.in_ln", hw),
                     "fc1": r.linear(f"diffloss.net.res_blocks.{i}.mlp.0", hw, hw),
                     "fc2": r.linear(f"diffloss.net.res_blocks.{i}.mlp.2", hw, hw),
                     "ada": r.linear(f"diffloss.net.res_blocks.{i}.adaLN_modulation.1", hw,
                                     3 * hw)}
                 for i in range(hd)},
      "final_ada": r.linear("diffloss.net.final_layer.adaLN_modulation.1", hw, 2 * hw),
      "final": r.linear("diffloss.net.final_layer.linear", hw, 2 * c),
  }
  params = {
      "class_embed": {"embedding": class_embed},
      "z_proj": r.linear("z_proj", c, d),
      "z_proj_ln": r.norm("z_proj_ln", d),
      "encoder_pos": r.get("encoder_pos_embed_learned", (1, p + n, d))[0],
      "encoder": {"blocks": _vit_blocks(r, "encoder_blocks", enc.num_layers, d, enc.num_heads,
                                        enc.hidden_dim),
                  "norm": r.norm("encoder_norm", d)},
      "decoder_embed": r.linear("decoder_embed", d, dd),
      "mask_token": r.get("mask_token", (1, 1, dd)).reshape(dd),
      "decoder_pos": r.get("decoder_pos_embed_learned", (1, p + n, dd))[0],
      "decoder": {"blocks": _vit_blocks(r, "decoder_blocks", dec.num_layers, dd, dec.num_heads,
                                        dec.hidden_dim),
                  "norm": r.norm("decoder_norm", dd)},
      "diffusion_pos": r.get("diffusion_pos_embed_learned", (1, n, dd))[0],
      "head": {"net": head},
  }
  return params


def read_mar_checkpoint(path: str, weights: str = "ema") -> Dict[str, np.ndarray]:
  """The state dict of a MAR checkpoint: its 'model_ema' (weights='ema', falling back to 'model'
  when the file has no EMA) or 'model'; a bare state dict or an .npz is returned as is."""
  from arjax.evaluate import inception
  if not os.path.isfile(path):
    raise FileNotFoundError(f"MAR checkpoint {path!r} not found (e.g. checkpoint-last.pth of "
                            "mar_base from the LTH14/mar README)")
  if weights not in ("ema", "model"):
    raise ValueError(f"MAR weights={weights!r}; expected 'ema' or 'model'")
  if path.endswith(".npz"):
    return inception.read_state_dict(path)
  import zipfile
  obj, storages = (inception._read_zip(path) if zipfile.is_zipfile(path)
                   else inception._read_legacy(path))
  if isinstance(obj, dict):
    for key in (("model_ema", "model") if weights == "ema" else ("model",)):
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict):
    raise ValueError(f"{path}: expected a MAR checkpoint (a mapping with 'model' / 'model_ema' "
                     f"state dicts), got {type(obj).__name__}")
  out = inception._resolve(obj, storages)
  return {k: v for k, v in out.items() if isinstance(v, np.ndarray)}


def check_vae_fits(config, tconfig) -> None:
  """Raises naming both sides when the VAE's latent grid or width is not the generator's
  tokens' (tokenizer.grid, tokenizer.latent_dim)."""
  tm = tconfig.model
  grid = tm.image_size // 2 ** (len(tm.ch_mult) - 1)
  dim = int(tm.quantizer.get("latent_dim", 0))
  t = config.tokenizer
  if (grid, dim) != (int(t.grid), int(t.get("latent_dim", 0))):
    raise ValueError(f"the VAE gives {grid}x{grid} latents of {dim} channels "
                     f"(model.image_size={tm.image_size}, ch_mult={list(tm.ch_mult)}, "
                     f"quantizer.latent_dim={dim}); the generator reads "
                     f"tokenizer.grid={t.grid}, tokenizer.latent_dim={t.get('latent_dim', 0)}")


def convert_mar(checkpoint: str, workdir: str, size: str = "B",
                config_path: str = "configs/imagenet256/mar.py", overrides=(),
                vae: Optional[str] = None, vae_overrides=(), params_fn=None) -> str:
  """Reads a MAR checkpoint and writes an arjax workdir; returns the workdir. With `vae`
  (kl16.ckpt) the VAE is written to `workdir/tokenizer` and named by the generator's
  tokenizer.checkpoint. Both files are read and checked before anything is written.
  params_fn(state_dict, config): the mapping (default mar_params; FAR's is far_params)."""
  from arjax.config import load_config
  from arjax.convert import mar_vae
  from arjax.convert.workdir import write_workdir
  params_fn = params_fn or mar_params
  if vae is None:
    config = load_config(f"{config_path}:size={size}", overrides)
    params = params_fn(read_mar_checkpoint(checkpoint), config)
    return write_workdir(config, params, workdir, source=os.path.abspath(checkpoint))
  tok_dir = os.path.abspath(os.path.join(workdir, "tokenizer"))
  config = load_config(f"{config_path}:size={size}",
                       list(overrides) + [f"tokenizer.checkpoint={tok_dir}"])
  tconfig = mar_vae.tokenizer_config(vae_overrides)
  check_vae_fits(config, tconfig)
  params = params_fn(read_mar_checkpoint(checkpoint), config)
  tparams = mar_vae.mar_vae_params(mar_vae.read_vae_checkpoint(vae), tconfig)
  write_workdir(tconfig, tparams, tok_dir, source=os.path.abspath(vae))
  return write_workdir(config, params, workdir, source=os.path.abspath(checkpoint))


@CONVERTERS.register("mar")
def _cli(args):
  return convert_mar(args.checkpoint, args.workdir, args.size or "B",
                     args.config or "configs/imagenet256/mar.py", args.overrides,
                     getattr(args, "vae", None), getattr(args, "vae_override", ()))

"""LlamaGen class-conditional GPT checkpoints (Sun et al. 2024, c2i_{B,L,XL,XXL,3B}_256.pt) ->
an arjax workdir of `configs/imagenet256/llamagen.py:size=...`.

  python -m arjax.convert llamagen --checkpoint c2i_L_256.pt --size L --workdir W

LlamaGen's names (PyTorch `nn.Linear` weights are [out, in]; arjax kernels are [in, ...out]):

  cls_embedding.embedding_table.weight  [C + 1, D]   -> class_embed.embedding (row C = null class)
  tok_embeddings.weight                 [V, D]       -> token_embed.embedding
  layers.i.attention.wqkv.weight        [(H + 2G) K, D] -> blocks.i.attn.wq / wk / wv
                                                        kernels [D, H, K] / [D, G, K] / [D, G, K]
  layers.i.attention.wo.weight          [D, H K]     -> blocks.i.attn.wo.kernel [H, K, D]
  layers.i.feed_forward.w1/w3.weight    [F, D]       -> blocks.i.mlp.w1/w3.kernel [D, F]
  layers.i.feed_forward.w2.weight       [D, F]       -> blocks.i.mlp.w2.kernel [F, D]
  layers.i.attention_norm / ffn_norm.weight [D]      -> blocks.i.attn_norm / mlp_norm.scale
  norm.weight                           [D]          -> backbone.norm.scale
  output.weight                         [V, D]       -> head.proj.kernel [D, V]

With `model.backbone.scan_layers=True` the blocks are stacked into the scan layout
(`arjax.nn.transformer.stack_block_params`: blocks.{attn,mlp,...} with a leading [N] axis).

The forward pass then matches LlamaGen's, including its 2D RoPE layout and the zero rotary
table at the class position (`backbone.rope_null = 'zero'`): tests/convert compare logits with
a float64 numpy transcription of LlamaGen's forward.

Legend: C classes, D width, H query heads, G key/value heads, K head dim, F SwiGLU width,
V vocabulary.
"""
from __future__ import annotations

import os
from typing import Dict, Mapping

import numpy as np

from arjax.convert.registry import CONVERTERS


def _expect(sd: Mapping[str, np.ndarray], key: str, shape) -> np.ndarray:
  if key not in sd:
    near = sorted(k for k in sd if k.split(".")[0] == key.split(".")[0])[:5]
    raise KeyError(f"LlamaGen checkpoint has no tensor {key!r} (expected shape {tuple(shape)}); "
                   f"tensors with that prefix: {near or sorted(sd)[:5]}")
  value = np.asarray(sd[key])
  if value.shape != tuple(shape):
    raise ValueError(f"LlamaGen tensor {key!r} has shape {value.shape}, but the arjax config "
                     f"expects {tuple(shape)}: wrong --size, vocabulary or number of classes?")
  return value.astype(np.float32)


def llamagen_params(state_dict: Mapping[str, np.ndarray], config) -> Dict:
  """LlamaGen GPT state dict -> arjax RasterAR parameters (nested dict of float32 numpy arrays),
  in the loop or the scan layout as `config.model.backbone.scan_layers` says.

  Every tensor of the arjax model is filled and checked; a LlamaGen tensor left over (e.g. a
  text-conditional model's caption projection) is an error naming it.
  """
  m, b = config.model, config.model.backbone
  if m.name != "raster_ar":
    raise ValueError(f"llamagen checkpoints convert into model.name='raster_ar', got {m.name!r}")
  d, h = b.dim, b.num_heads
  g = b.num_kv_heads or h
  k = d // h
  from arjax.nn.layers import swiglu_hidden_dim
  f = b.mlp_dim or swiglu_hidden_dim(d, b.multiple_of)
  v = config.tokenizer.vocab_size
  used = set()

  def get(key, shape):
    used.add(key)
    return _expect(state_dict, key, shape)

  blocks = {}
  for i in range(b.num_layers):
    p = f"layers.{i}."
    wqkv = get(p + "attention.wqkv.weight", ((h + 2 * g) * k, d))
    wq, wk, wv = np.split(wqkv, [h * k, (h + g) * k], axis=0)
    blocks[i] = {
        "attn": {"wq": {"kernel": wq.T.reshape(d, h, k)},
                 "wk": {"kernel": wk.T.reshape(d, g, k)},
                 "wv": {"kernel": wv.T.reshape(d, g, k)},
                 "wo": {"kernel": get(p + "attention.wo.weight", (d, h * k)).T.reshape(h, k, d)}},
        "attn_norm": {"scale": get(p + "attention_norm.weight", (d,))},
        "mlp": {"w1": {"kernel": get(p + "feed_forward.w1.weight", (f, d)).T},
                "w2": {"kernel": get(p + "feed_forward.w2.weight", (d, f)).T},
                "w3": {"kernel": get(p + "feed_forward.w3.weight", (f, d)).T}},
        "mlp_norm": {"scale": get(p + "ffn_norm.weight", (d,))},
    }
  params = {
      "backbone": {"blocks": blocks, "norm": {"scale": get("norm.weight", (d,))}},
      "class_embed": {"embedding": get("cls_embedding.embedding_table.weight",
                                       (m.num_classes + 1, d))},
      "token_embed": {"embedding": get("tok_embeddings.weight", (v, d))},
      "head": {"proj": {"kernel": get("output.weight", (v, d)).T}},
  }
  # Buffers LlamaGen keeps in its state dict (rotary tables, KV caches) carry no parameters.
  leftover = sorted(key for key in state_dict if key not in used
                    and not key.startswith("freqs_cis") and "kv_cache" not in key
                    and "causal_mask" not in key)
  if leftover:
    raise ValueError(f"LlamaGen checkpoint has tensors the arjax model has no place for: "
                     f"{leftover[:8]}{' ...' if len(leftover) > 8 else ''} (a t2i model, or "
                     f"more layers than --size gives?)")
  if b.scan_layers:
    from arjax.nn.transformer import stack_block_params
    params = stack_block_params(params)
  return params


def convert_llamagen(checkpoint: str, workdir: str, size: str = "L",
                     config_path: str = "configs/imagenet256/llamagen.py",
                     overrides=()) -> str:
  """Reads a LlamaGen c2i checkpoint and writes an arjax workdir; returns the workdir."""
  from arjax.config import load_config
  from arjax.evaluate.inception import read_state_dict
  from arjax.convert.workdir import write_workdir
  if not os.path.isfile(checkpoint):
    raise FileNotFoundError(f"LlamaGen checkpoint {checkpoint!r} not found (e.g. c2i_L_256.pt "
                            "from the LlamaGen README's model zoo)")
  config = load_config(f"{config_path}:size={size}", overrides)
  params = llamagen_params(read_state_dict(checkpoint), config)
  return write_workdir(config, params, workdir, source=os.path.abspath(checkpoint))


@CONVERTERS.register("llamagen")
def _cli(args):
  return convert_llamagen(args.checkpoint, args.workdir, args.size or "L",
                          args.config or "configs/imagenet256/llamagen.py", args.overrides)

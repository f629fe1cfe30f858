"""Configs as code: the shared base config, argument parsing and loading.

A config file defines `get_config(arg: str | None) -> ConfigDict`. The argument after the colon
(`configs/quickstart.py:smoke`, `configs/imagenet256/llamagen.py:size=L,smoke`) is parsed by
`parse_arg` into a dict. Every config derives from `base_config()` and every field has a
default, so an unknown field in an override fails with the field's name.
"""
from __future__ import annotations

import ast
import importlib.util
import os
from typing import Any, Dict, Iterable, Optional

import ml_collections

ConfigDict = ml_collections.ConfigDict


def parse_arg(arg: Optional[str], **defaults) -> ml_collections.ConfigDict:
  """'size=L,smoke' -> ConfigDict(size='L', smoke=True), over `defaults`.

  Unknown keys are an error naming the key, so a typo never silently runs the default.
  """
  out = dict(defaults)
  out.setdefault("smoke", False)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    key = key.strip()
    if key not in out:
      raise ValueError(f"unknown config argument {key!r}; expected one of {sorted(out)}")
    if not sep:
      out[key] = True
      continue
    default = out[key]
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r}: expected true or false")
      out[key] = value.lower() in ("true", "1")
    elif isinstance(default, int):
      out[key] = int(value)
    elif isinstance(default, float):
      out[key] = float(value)
    else:
      out[key] = value
  return ml_collections.ConfigDict(out)


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment: a tiny raster AR model on bundled MNIST."""
  from arjax import data as data_lib

  c = ml_collections.ConfigDict()
  c.seed = 0                      # seeds parameters, data order and dropout.
  c.data = data_lib.default_config()

  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.name = "pixel"      # registry name in arjax.tokenizers.
  c.tokenizer.levels = 8          # pixel: grey levels per sub-pixel (the vocabulary).
  c.tokenizer.resolution = 14     # pixel: token grid side (images are area-downsampled).
  c.tokenizer.channels = 1        # pixel: image channels.
  c.tokenizer.vocab_size = 0      # cached: codebook size of the pre-tokenized data.
  c.tokenizer.grid = 0            # cached: token grid side (grid*grid tokens).
  c.tokenizer.checkpoint = ""     # cached: workdir of the tokenizer run (decodes samples).
  c.tokenizer.latent_dim = 0      # cached: channels C of continuous latents (0: discrete tokens).

  c.order = ml_collections.ConfigDict()
  c.order.name = "raster"         # registry name in arjax.orders.

  c.model = ml_collections.ConfigDict()
  c.model.name = "raster_ar"      # registry name in arjax.models.
  c.model.num_classes = 10        # class-conditional; index num_classes is the null class.
  c.model.class_dropout = 0.1     # probability of the null class in training (for CFG).
  c.model.token_dropout = 0.0     # dropout on input embeddings.
  h = c.model.head = ml_collections.ConfigDict()
  h.name = "categorical"          # registry name in arjax.heads (fields: that head's declared ones).
  h.label_smoothing = 0.0         # categorical: cross-entropy label smoothing.
  b = c.model.backbone = ml_collections.ConfigDict()
  b.num_layers = 4                # transformer blocks.
  b.num_heads = 4                 # query heads.
  b.num_kv_heads = 0              # key/value heads (0: as many as query heads).
  b.dim = 128                     # width D.
  b.mlp_dim = 0                   # SwiGLU width (0: Llama's 2/3*4D rounded to multiple_of).
  b.multiple_of = 64              # rounding of the default SwiGLU width.
  b.qk_norm = False               # RMSNorm on queries and keys.
  b.adaln = False                 # adaLN conditioning of every block.
  b.position = "rope2d"           # rope1d | rope2d | learned | none.
  b.rope_base = 10000.0           # RoPE frequency base.
  b.rope_null = "zero"            # rotation of position -1 (class token): zero (LlamaGen) | identity.
  b.max_positions = 0             # table size for position='learned'.
  b.resid_dropout = 0.0           # dropout on attention and MLP outputs.
  b.ffn_dropout = 0.0             # dropout inside the SwiGLU.
  b.norm_eps = 1e-5               # norm epsilon.
  b.norm = "rmsnorm"              # rmsnorm (Llama) | layernorm (ViT: RAR, LPD).
  b.mlp = "swiglu"                # swiglu (Llama) | gelu (ViT).
  b.bias = False                  # biases in attention, MLP and adaLN (ViT).
  b.dtype = "float32"             # compute dtype: float32 | bfloat16.
  b.attention_impl = "auto"       # auto | xla | pallas | cudnn.

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 64               # global batch size (examples).
  t.num_steps = 2000              # optimizer steps.
  t.lr = 1e-3                     # peak learning rate.
  t.warmup_steps = 100            # linear warmup steps.
  t.end_lr_ratio = 0.1            # cosine decays to lr * end_lr_ratio.
  t.weight_decay = 0.05           # AdamW decoupled weight decay.
  t.b1 = 0.9                      # Adam beta1.
  t.b2 = 0.95                     # Adam beta2.
  t.grad_clip = 1.0               # global-norm gradient clipping (0: off).
  t.ema_decay = 0.0               # parameter EMA decay (0: no EMA).
  t.log_every = 50                # steps between metric writes and progress lines.
  t.eval_every = 1000             # steps between evaluations (test bits/dim + sample grid).
  t.checkpoint_every = 500        # steps between checkpoints.
  t.keep_checkpoints = 3          # checkpoints kept (older ones deleted).
  t.async_checkpointing = True    # save in the background while training continues.
  t.max_nonfinite_steps = 5       # stop after this many consecutive non-finite steps.

  e = c.eval = ml_collections.ConfigDict()
  e.batch_size = 500              # evaluation batch size.
  e.num_examples = -1             # test examples for bits/dim (-1: the whole split).
  e.samples_per_class = 8         # sample grid: rows = classes, columns = this.
  e.cfg_scale = 1.0               # classifier-free guidance scale (1: none).
  e.temperature = 1.0             # sampling temperature (0: greedy).
  e.top_k = 0                     # top-k filtering (0: off).
  e.top_p = 1.0                   # nucleus filtering (1: off).

  s = c.sampling = ml_collections.ConfigDict()
  s.name = "auto"                 # sampler registry name (arjax.sampling); auto: the model's default.
  # The sampling options (cfg_scale, temperature, top_k, top_p) are the eval.* fields above.

  m = c.mesh = ml_collections.ConfigDict()
  m.data = -1                     # data-parallel degree (-1: the remaining devices).
  m.fsdp = 1                      # FSDP degree: parameters and optimizer state sharded.
  m.tensor = 1                    # tensor-parallel degree: heads and MLP split.
  from arjax.parallel.rules import DEFAULT_RULES
  c.sharding_rules = [list(r) for r in DEFAULT_RULES]  # logical axis -> mesh axes.
  return c


def load_config_module(path: str):
  """Imports a config file as a module (config files are not a package)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  module_spec = importlib.util.spec_from_file_location(
      "arjax_config_" + os.path.basename(path).replace(".py", ""), path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module


def sibling_config(this_file: str, name: str):
  """The config module `name` next to `this_file`: how a config derives from a shared base
  (`llamagen = sibling_config(__file__, 'llamagen.py')`) instead of copying it."""
  return load_config_module(os.path.join(os.path.dirname(os.path.abspath(this_file)), name))


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:ARG]' and applies 'a.b=value' overrides (type-checked)."""
  path, _, arg = spec.partition(":")
  module = load_config_module(path)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path!r} defines no get_config(arg)")
  config = module.get_config(arg or None)
  for item in overrides:
    apply_override(config, item)
  config.lock()
  return config


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
  """'train.lr=3e-4' -> sets the field, checking that it exists and that the type fits."""
  key, sep, raw = item.partition("=")
  if not sep:
    raise ValueError(f"override {item!r} is not of the form field=value")
  node = config
  parts = key.split(".")
  for p in parts[:-1]:
    if p not in node:
      raise KeyError(f"unknown config field {key!r} (no {p!r})")
    node = node[p]
  leaf = parts[-1]
  if leaf not in node:
    raise KeyError(f"unknown config field {key!r}")
  current = node[leaf]
  value: Any = raw
  if not isinstance(current, str):
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      raise ValueError(f"config field {key!r} expects {type(current).__name__}, got {raw!r}")
  if isinstance(current, bool) != isinstance(value, bool) or (
      isinstance(current, (int, float)) and not isinstance(value, (int, float))):
    raise ValueError(f"config field {key!r} expects {type(current).__name__}, got {raw!r}")
  if isinstance(current, float) and isinstance(value, int):
    value = float(value)
  if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float):
    raise ValueError(f"config field {key!r} expects int, got {raw!r}")
  node[leaf] = value


def to_dict(config) -> Dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)

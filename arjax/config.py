"""Configs as code: the shared base config, argument parsing and loading.

A config file defines `get_config(arg: str | None) -> ConfigDict`. The argument after the colon
(`configs/quickstart.py:smoke`, `configs/imagenet256/llamagen.py:size=L,smoke`) is parsed by
`parse_arg` into a dict. Every config derives from `base_config()` and every field has a
default, so an unknown field in an override fails with the field's name.

The nodes of the named parts (`config.tokenizer`, `config.order`, `config.model`, ...) hold the
fields their part declares (`Registry.register(name, fields=...)`): `load_config` completes each
node with its part's declared defaults before applying overrides, so `--config.order.schedule=`
works on a config that never set it, and an undeclared (e.g. misspelled) field fails at start
naming the part and the field.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import ml_collections
from absl import flags
from ml_collections import config_flags

from arjax.registry import Range, check_finite, complete_node

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

  # The part nodes hold `name` and the fields the named part declares, with their defaults and
  # comments beside the part (e.g. arjax.tokenizers.pixel.PixelFields: levels 8, resolution 14,
  # channels 1); `load_config` completes them, so a config sets only what it changes.
  c.tokenizer = ml_collections.ConfigDict()
  c.tokenizer.name = "pixel"      # registry name in arjax.tokenizers.

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
  b.scan_layers = False           # stacked block params under one lax.scan (fast compile).
  b.remat = "none"                # per-block jax.checkpoint policy: none | nothing_saveable | ...

  t = c.train = ml_collections.ConfigDict()
  t.batch_size = 64               # global batch size (examples).
  t.num_steps = 2000              # optimizer steps.
  t.optimizer = "adamw"           # adamw | lion | adafactor (arjax.train.optim.OPTIMIZERS).
  t.schedule = "cosine"           # cosine | linear | constant | rsqrt, after linear warmup.
  t.lr = 1e-3                     # peak learning rate.
  t.warmup_steps = 100            # linear warmup steps.
  t.end_lr_ratio = 0.1            # cosine / linear decay to lr * end_lr_ratio.
  t.weight_decay = 0.05           # decoupled weight decay (not on norms and 1-D parameters).
  t.b1 = 0.9                      # Adam / Lion beta1 (Adafactor: momentum, 0 for none).
  t.b2 = 0.95                     # Adam / Lion beta2.
  t.grad_clip = 1.0               # global-norm gradient clipping (0: off).
  t.ema_decay = 0.0               # parameter EMA decay (0: no EMA).
  t.log_every = 50                # steps between metric writes and progress lines.
  t.eval_every = 1000             # steps between evaluations (test bits/dim + sample grid).
  t.checkpoint_every = 500        # steps between checkpoints.
  t.keep_checkpoints = 3          # checkpoints kept (older ones deleted).
  t.async_checkpointing = True    # save in the background while training continues.
  t.max_nonfinite_steps = 5       # stop after this many consecutive non-finite steps.
  t.grad_accum_steps = 1          # micro-batches per step (batch_size must be divisible by it).

  e = c.eval = ml_collections.ConfigDict()
  e.batch_size = 500              # evaluation batch size.
  e.num_examples = -1             # test examples for bits/dim (-1: the whole split).
  e.samples_per_class = 8         # sample grid: rows = classes, columns = this.
  e.cfg_scale = 1.0               # classifier-free guidance scale (1: none).
  e.temperature = 1.0             # sampling temperature (0: greedy).
  e.top_k = 0                     # top-k filtering (0: off).
  e.top_p = 1.0                   # nucleus filtering (1: off).
  # Evaluators by name, each with its interval: {NAME: {every: N, ...fields}} (every 0:
  # train.eval_every; arjax.train.evaluators.EVALUATORS). Empty: the model kind's defaults
  # (generators: bits_per_dim and sample_grid) every train.eval_every steps.
  e.evaluators = ml_collections.ConfigDict()

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


# The named parts whose config nodes `complete` fills and checks: (config path, the registry
# that names them, as "module:attribute"). Resolved when a config is loaded, not when this module
# is imported: configs import `base_config` from here, and the registries live in the layers that
# configs build. A path that a config lacks is skipped; a nested path (e.g. "model.head") is
# completed by its own line and left out of its parent's check. Sub-nodes a part declares itself
# (its fields' SUBNODES, e.g. the autoencoder's `model.quantizer`) need no line here.
PARTS = (
    ("tokenizer", "arjax.tokenizers:TOKENIZERS"),
    ("order", "arjax.orders:ORDERS"),
    ("model", "arjax.models:MODELS"),
    ("model.head", "arjax.heads:HEADS"),
    ("sampling", "arjax.sampling.config:SamplingFields"),
)


def _resolve(ref: str):
  module, _, attr = ref.partition(":")
  return getattr(importlib.import_module(module), attr)


def _node(config, path: str):
  node = config
  for p in path.split("."):
    if not hasattr(node, "keys") or p not in node:
      return None
    node = node[p]
  return node


def complete(config: ml_collections.ConfigDict, drop: Iterable[str] = ()) -> List[str]:
  """Completes every part's node with its declared defaults, in place, and checks it (an
  undeclared field fails naming the part and the field). `drop`: paths an earlier completion
  added and nothing set since, removed where the part now named does not declare them. Returns
  the dotted paths of the fields added."""
  paths = [p for p, _ in PARTS]
  added: List[str] = []
  drop = set(drop)
  for path, ref in PARTS:
    node = _node(config, path)
    if node is None:
      continue
    skip = [q[len(path) + 1:] for q in paths if q.startswith(path + ".") and "." not in
            q[len(path) + 1:]]
    added += complete_node(_resolve(ref), node, path, skip=skip, drop=drop)
  return added


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
  """Loads 'path/to/config.py[:ARG]', completes the parts' nodes with their declared defaults,
  applies the overrides through `ml_collections.config_flags` (each 'a.b=value' or
  '--config.a.b=value'; type-checked, an unknown field fails naming it) and checks the result
  (`complete`, `validate`). The locked config."""
  argv = ["--config", spec] + [o if o.startswith(_FLAG + ".") else f"{_FLAG}.{o}"
                               for o in overrides]
  config, _, rest = parse_config_flags(argv)
  if rest:
    raise ValueError(f"not a config override: {' '.join(rest)!r}; expected FIELD=VALUE")
  return config


# Config flags: `--config FILE[:ARG]` and `--config.FIELD=VALUE` (or `--config.FIELD VALUE`),
# parsed by ml_collections.config_flags, the only parser of overrides.
_FLAG = "--config"


class _ListParser(flags.ArgumentParser):
  """config_flags has no parser for list fields (e.g. sharding_rules): a Python literal list."""

  def parse(self, argument):
    if isinstance(argument, list):
      return argument
    try:
      value = ast.literal_eval(argument)
    except (ValueError, SyntaxError):
      value = None
    if not isinstance(value, list):
      raise ValueError(f"expected a list literal such as [['batch', 'data']], got {argument!r}")
    return value

  def flag_type(self):
    return "list"


class _NoneFieldParser(flags.ArgumentParser):
  """A field whose default is None (e.g. a backbone's cond_dim: 'as wide as the model') takes
  any Python literal (config_flags has no parser for None-typed fields); a bare word is refused
  (write a string as "'text'"), as every non-string field refuses one."""

  def parse(self, argument):
    if not isinstance(argument, str):
      return argument
    try:
      return ast.literal_eval(argument)
    except (ValueError, SyntaxError):
      raise ValueError(f"expected a Python literal (a number, True/False, None, a quoted "
                       f"string, a list), got {argument!r}") from None

  def flag_type(self):
    return "literal"


config_flags.register_flag_parser_for_type(list, _ListParser())
config_flags.register_flag_parser_for_type(type(None), _NoneFieldParser())


def _override_paths(argv: List[str]) -> List[Tuple[str, Optional[str]]]:
  """(field path, value or None when it is the next argument) of each '--config.FIELD[=V]' in
  argv, in order (config_flags' own rule for which arguments are overrides)."""
  out = []
  for i, arg in enumerate(argv):
    m = re.match(r"^--?(no)?config\.([^=]+)(=(.*))?$", arg)
    if m:
      value = m.group(4) if m.group(3) else (argv[i + 1] if i + 1 < len(argv) else None)
      out.append((m.group(2), value))
  return out


def _check_path(config, path: str) -> None:
  """An override's field must exist: KeyError naming it and the node's fields."""
  node, parts = config, path.split(".")
  for i, p in enumerate(parts):
    if not hasattr(node, "keys") or p not in node:
      where = "config" + "".join("." + q for q in parts[:i])
      close = difflib.get_close_matches(p, list(node.keys()), n=1) if hasattr(node, "keys") else []
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise KeyError(f"unknown config field {path!r} (no {p!r} in {where}{hint})")
    node = node[p]


def _part_name_paths() -> Set[str]:
  return {f"{p}.name" for p, _ in PARTS}


class _CompletingParser(flags.ArgumentParser):
  """config_flags' parser of the `--config FILE[:ARG]` value, completing the parts' nodes before
  config_flags defines the override flags: a part's declared field is overridable even where the
  file never set it. A part renamed by an override (`--config.order.name=lpd`) is renamed here
  first, in argv order, so that the new part's fields exist when the overrides are defined.
  Errors are kept (absl would fold them into a generic flag error) and re-raised as they were."""

  def __init__(self, argv: List[str]):
    self.argv = argv
    self.error: Optional[BaseException] = None

  def flag_type(self):
    return "config file"

  def parse(self, argument):
    try:
      return self._load(argument)
    except Exception as err:  # re-raised by parse_config_flags, unwrapped.
      self.error = err
      raise

  def _load(self, spec: str):
    path, _, arg = spec.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
      raise ValueError(f"config file {path!r} defines no get_config(arg)")
    config = module.get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
      raise ValueError(f"config file {path!r}: get_config returned {type(config).__name__}, "
                       "expected a ConfigDict")
    added: Set[str] = set(complete(config))
    names = _part_name_paths()
    for field, value in _override_paths(self.argv):
      if field in names and value is not None:
        _check_path(config, field)
        node, leaf = _node(config, field.rsplit(".", 1)[0]), "name"
        node[leaf] = value
        added.discard(field)
        # The defaults completed for the old part that the new one does not declare go.
        added |= set(complete(config, drop=added))
    for field, _ in _override_paths(self.argv):
      _check_path(config, field)
    return config


def _flag_error(text: str, config) -> str:
  """absl's 'flag --config.train.lr=abc: could not convert string to float: ...' -> "config
  field 'train.lr' expects float, got 'abc' (could not convert ...)"; other flag errors ('Missing
  value for flag --config.train.lr', a misplaced override) as they are."""
  m = re.match(r"^flag --config\.([^=]+)=(.*?): (.*)$", text, re.S)
  if not m or config is None:
    return text
  path, raw, why = m.groups()
  current = config
  for p in path.split("."):
    current = current[p] if hasattr(current, "keys") and p in current else None
  kind = "a section (a dict)" if hasattr(current, "keys") else type(current).__name__
  why = " ".join(str(why).replace("`", "'").split())
  return f"config field {path!r} expects {kind}, got {raw!r} ({why})"


def parse_config_flags(argv: List[str]) -> Tuple[Optional[ml_collections.ConfigDict],
                                                  Optional[str], List[str]]:
  """`--config FILE[:ARG]` and its `--config.FIELD=VALUE` overrides parsed out of argv by
  ml_collections.config_flags, on a private FlagValues (so repeated calls never collide).
  Returns (the completed, validated, locked config, or None without --config; the FILE[:ARG]
  given; the other arguments in order, for the entry point's own parser). A user mistake
  (missing file, unknown field, a value of the wrong type or range, an override without a
  value) raises ValueError or KeyError naming the flag or field."""
  argv = list(argv)
  fv = flags.FlagValues()
  holder = config_flags.DEFINE_config_file(
      "config", None, "experiment config file[:args]", flag_values=fv, lock_config=False,
      sys_argv=["prog"] + argv)
  parser = _CompletingParser(argv)
  fv["config"].parser = parser
  try:
    rest = fv(["prog"] + argv, known_only=True)[1:]
  except Exception as err:
    if parser.error is not None:
      raise parser.error from None
    if isinstance(err, flags.Error):
      raise ValueError(_flag_error(str(err), fv["config"].value)) from err
    raise
  if parser.error is not None:
    raise parser.error
  config = holder.value
  if config is None:
    stray = [a for a in rest if re.match(r"^--?(no)?config\.", a)]
    if stray:
      raise ValueError(f"{stray[0]} without --config FILE before it")
    return None, None, rest
  complete(config)  # a final check: every part's node holds its declared fields only.
  validate(config)
  config.lock()
  return config, fv["config"].config_filename, rest


_INT1 = Range(lo=1, integer=True)       # counts and intervals.
_INT0 = Range(lo=0, integer=True)
_PROB = Range(lo=0.0, hi=1.0)           # probabilities, fractions.
_DECAY = Range(lo=0.0, hi=1.0, hi_open=True)
_NONNEG = Range(lo=0.0)

# The accepted values of the shared sections' fields (the parts' own fields are checked by
# their declared fields: `arjax.registry.ranged`). A path a config lacks is skipped.
FIELD_RANGES: Dict[str, Range] = {
    "seed": Range(integer=True),
    "train.batch_size": _INT1, "train.num_steps": _INT1,
    "train.lr": Range(lo=0.0, lo_open=True), "train.warmup_steps": _INT0,
    "train.end_lr_ratio": _PROB, "train.weight_decay": _NONNEG,
    "train.b1": _DECAY, "train.b2": _DECAY, "train.grad_clip": _NONNEG,
    "train.ema_decay": _DECAY, "train.log_every": _INT1, "train.eval_every": _INT1,
    "train.checkpoint_every": _INT1, "train.keep_checkpoints": _INT1,
    "train.max_nonfinite_steps": _INT1, "train.grad_accum_steps": _INT1,
    "eval.batch_size": _INT1, "eval.num_examples": Range(lo=1, integer=True, also=(-1,)),
    "eval.samples_per_class": _INT1, "eval.cfg_scale": _NONNEG, "eval.temperature": _NONNEG,
    "eval.top_k": _INT0, "eval.top_p": Range(lo=0.0, hi=1.0, lo_open=True),
    "mesh.data": Range(lo=1, integer=True, also=(-1,)), "mesh.fsdp": _INT1,
    "mesh.tensor": _INT1,
    "data.prefetch": _INT0, "data.worker_count": _INT0, "data.device_prefetch": _INT0,
    "model.num_classes": _INT1,
    "model.backbone.num_layers": _INT1, "model.backbone.num_heads": _INT1,
    "model.backbone.dim": _INT1, "model.backbone.num_kv_heads": _INT0,
    "model.backbone.mlp_dim": _INT0, "model.backbone.multiple_of": _INT1,
    "model.backbone.norm_eps": Range(lo=0.0, lo_open=True),
    "model.backbone.rope_base": Range(lo=0.0, lo_open=True),
    "model.backbone.max_positions": _INT0,
}

# Fields named like these are probabilities wherever they sit (class_dropout, resid_dropout, ...).
# (A part whose probability field has a sentinel declares its range itself: VAR's drop_path.)
_PROBABILITY_SUFFIXES = ("dropout", "_prob")


def _leaves(node, prefix=""):
  for key in node.keys():
    value = node[key]
    path = f"{prefix}{key}"
    if hasattr(value, "keys"):
      yield from _leaves(value, path + ".")
    else:
      yield path, value


def validate(config: ml_collections.ConfigDict) -> None:
  """Checks every field's value at start: no NaN or infinity anywhere, the shared sections'
  ranges (FIELD_RANGES), probabilities in [0, 1], and the cross-field constraints. Raises
  ValueError naming the field, the value and what is accepted (the parts' declared ranges are
  checked when their nodes are read)."""
  for path, value in _leaves(config):
    check_finite(path, value)
    if path in FIELD_RANGES:
      FIELD_RANGES[path].check(path, value)
    elif path.rsplit(".", 1)[-1].endswith(_PROBABILITY_SUFFIXES) and not isinstance(value, bool):
      _PROB.check(path, value)
  t = config.get("train")
  if t is not None and "grad_accum_steps" in t and "batch_size" in t:
    if t.batch_size % t.grad_accum_steps:
      raise ValueError(f"config.train.batch_size={t.batch_size} is not divisible by "
                       f"config.train.grad_accum_steps={t.grad_accum_steps}")
  b = _node(config, "model.backbone")
  if b is not None and "dim" in b and "num_heads" in b and b.dim % b.num_heads:
    raise ValueError(f"config.model.backbone.dim={b.dim} is not divisible by "
                     f"config.model.backbone.num_heads={b.num_heads}")


# Fields every saved run's `config.tokenizer` carried before the parts declared their fields
# (base_config set both tokenizers' fields), at the values base_config gave them.
_LEGACY_TOKENIZER_FIELDS = dict(levels=8, resolution=14, channels=1, vocab_size=0, grid=0,
                                checkpoint="")


def upgrade_saved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A run's saved config (config.json) made before parts declared their fields -> the same
  config without the other tokenizer's fields that base_config used to add at their defaults
  (a value that differs from that default stays, and fails in the check as any undeclared
  field). Returns `config`, changed in place."""
  model = _node(config, "model")
  if model is not None and isinstance(model.get("head"), str):
    # Before heads had their own node: model.head = 'name', model.label_smoothing beside it.
    name = model.head
    smoothing = float(model.get("label_smoothing", 0.0))
    del model["head"]
    if "label_smoothing" in model:
      del model["label_smoothing"]
    model.head = ml_collections.ConfigDict({"name": name})
    if name == "categorical":
      model.head.label_smoothing = smoothing
  # Fields added to base_config since the run was saved (train.grad_accum_steps, the sampling
  # node, ...) take their defaults, which are what the run trained with.
  base = base_config()
  for section in ("train", "eval", "mesh", "sampling"):
    if section not in base:
      continue
    if section not in config:
      config[section] = ml_collections.ConfigDict(base[section].to_dict())
      continue
    for key, value in base[section].items():
      if key not in config[section]:
        config[section][key] = value
  node = _node(config, "tokenizer")
  if node is None or "name" not in node:
    return config
  tokenizers = _resolve(dict(PARTS)["tokenizer"])
  if node.name not in tokenizers or tokenizers.fields(node.name) is None:
    return config
  declared = {f.name for f in dataclasses.fields(tokenizers.fields(node.name))}
  for key, old in _LEGACY_TOKENIZER_FIELDS.items():
    if key in node and key not in declared and node[key] == old:
      del node[key]
  return config


def to_dict(config) -> Dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)

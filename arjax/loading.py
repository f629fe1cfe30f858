"""Loading a trained run for inference: `arjax.load(workdir)` -> (model, variables, config).

    import arjax
    fm, variables, config = arjax.load("workdirs/quickstart")     # latest checkpoint
    model = fm.bind(variables)                                     # an nnx.Module, or:
    sampler = build_sampler(fm, SamplingConfig(), config)          # arjax.sampling.orders
    tokens = sampler.sample_tokens(variables, labels, jax.random.key(0))

Only the parameters the run evaluates with (their EMA when `train.ema_decay > 0`) and the
model state (a VQ EMA codebook) are read, with an Orbax partial restore of the checkpoint's
`state` item; the optimizer is never built and its state never read, and nothing here imports
the trainer. A generator on a token cache (`tokenizer.name='cached'`,
`tokenizer.checkpoint=RUN`) gets the tokenizer run RUN loaded the same way, frozen, as the
decoder of its tokenizer (`generator_tokenizer`): parts never restore runs themselves.

This module also holds the read side of the checkpoint format that `arjax.train.checkpoint`
writes (directory layout, per-tensor shape check, per-file digests): a step whose files differ
from its digests is refused (CheckpointCorruptError naming the files), as the trainer does. Layer: beside `arjax.data` and
`arjax.config`, above `arjax.sampling`, below `arjax.train` and `arjax.evaluate`
(docs/architecture.md).

Legend: B batch, N tokens per image, D latent channels, H/W image size, C channels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np

_log = logging.getLogger(__name__)

# -- the checkpoint format (written by arjax.train.checkpoint.Checkpointer) --------------------
CHECKPOINT_DIR = "checkpoints"          # WORKDIR/checkpoints/STEP/{state,data,meta}
ITEM_NAMES = ("state", "data", "meta")  # the TrainState, the data iterator, JSON metadata.
MODEL_STATE_PREFIX = "model_state/"     # how model-state tensors are named in shape checks.


class CheckpointMismatchError(ValueError):
  pass


def flat_shapes(tree, prefix: str = "") -> Dict[str, Tuple[list, str]]:
  """{'a/b/kernel': [shape, dtype]} of a tree of arrays or ShapeDtypeStructs."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    key = prefix + "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = [list(leaf.shape), str(np.dtype(leaf.dtype))]
  return out


def saved_shapes(meta: Dict[str, Any]) -> Dict[str, Tuple[list, str]]:
  """Parameter and (prefixed) model-state shapes recorded in a checkpoint's metadata."""
  # Checkpoints written before model state was carried have no model_state_shapes: they hold
  # none, which is what a model without model state expects.
  return {**meta.get("param_shapes", {}), **{MODEL_STATE_PREFIX + k: v for k, v in
                                             meta.get("model_state_shapes", {}).items()}}


def check_shapes(saved: Dict[str, Any], expected: Dict[str, Any], where: str) -> None:
  """Raises CheckpointMismatchError naming every tensor whose shape or dtype differs."""
  fmt = lambda v: f"{list(v[0])} {v[1]}"
  problems = []
  for key in sorted(set(saved) | set(expected)):
    if key not in saved:
      problems.append(f"  {key}: missing in checkpoint (model expects {fmt(expected[key])})")
    elif key not in expected:
      problems.append(f"  {key}: in checkpoint {fmt(saved[key])} but not in the model")
    elif list(saved[key]) != list(expected[key]):
      problems.append(f"  {key}: checkpoint {fmt(saved[key])} vs model {fmt(expected[key])}")
  if problems:
    raise CheckpointMismatchError(
        f"checkpoint {where} does not match the model ({len(problems)} tensors differ):\n"
        + "\n".join(problems))


def complete_steps(directory: str):
  """Steps with a finished checkpoint: Orbax renames STEP.orbax-checkpoint-tmp* when done."""
  return sorted(int(d) for d in os.listdir(directory) if d.isdigit()) if os.path.isdir(
      directory) else []


# -- integrity: per-file digests written with each step (arjax.train.checkpoint.write_digests) --
DIGESTS_FILE = "digests.json"
# Orbax rewrites these two after its post-finalization callback (the commit timestamp, the commit
# marker), so they cannot be digested there; restoring reads neither (checked: flipping, emptying
# or deleting them leaves a restore unchanged).
_WRITTEN_AFTER_DIGESTS = ("_CHECKPOINT_METADATA", "commit_success.txt")


class CheckpointCorruptError(ValueError):
  """A checkpoint step whose files differ from the digests written with it, or that cannot be
  read; the message names the step, the directory and every file that differs."""


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      h.update(chunk)
  return h.hexdigest()


def file_digests(step_dir: str) -> Dict[str, List]:
  """{path relative to step_dir: [size in bytes, sha256 hex]} of every file Orbax wrote."""
  out = {}
  for root, dirs, files in os.walk(step_dir):
    dirs.sort()
    for name in sorted(files):
      full = os.path.join(root, name)
      rel = os.path.relpath(full, step_dir)
      if rel in _WRITTEN_AFTER_DIGESTS or rel.startswith(DIGESTS_FILE):
        continue
      out[rel] = [os.path.getsize(full), _sha256(full)]
  return out



def verify_step(step_dir: str) -> Optional[List[str]]:
  """Checks a step's files against its digests.json.

  Returns None when the step has no digests (written before they existed), [] when every file
  matches, else one problem per file ('state/d/ab12...: empty (expected 57843 bytes)').
  Files not listed (Orbax's commit marker and timestamp) are not checked.
  """
  path = os.path.join(step_dir, DIGESTS_FILE)
  if not os.path.lexists(path):
    return None
  try:
    with open(path) as f:
      files = json.load(f)["files"]
    files = {str(k): (int(v[0]), str(v[1])) for k, v in files.items()}
  except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
    return [f"{DIGESTS_FILE}: unreadable ({type(e).__name__}: {e})"]
  problems = []
  for rel, (size, digest) in sorted(files.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      problems.append(f"{rel}: missing")
      continue
    actual = os.path.getsize(full)
    if actual != size:
      what = "empty" if actual == 0 else f"{actual} bytes"
      problems.append(f"{rel}: {what} (expected {size} bytes)")
    elif _sha256(full) != digest:
      problems.append(f"{rel}: content differs from its sha256 digest")
  return problems


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with (WORKDIR/config.json)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of an arjax.train run?")
  with open(path) as f:
    try:
      saved = json.load(f)
    except ValueError as e:  # truncated or edited by hand.
      raise ValueError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(saved, dict):
    raise ValueError(f"{path} holds {type(saved).__name__}, expected the run's config object")
  config = ml_collections.ConfigDict(saved)
  from arjax.config import upgrade_saved
  return upgrade_saved(config)  # runs saved before the parts declared their fields.


def resolve_step(workdir: str, step: Optional[int] = None) -> int:
  """`step` if WORKDIR holds that complete checkpoint, else the latest one when step is None."""
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  steps = complete_steps(directory)
  if step is None:
    if not steps:
      raise FileNotFoundError(f"no complete checkpoint in {directory}")
    return steps[-1]
  if int(step) not in steps:
    raise FileNotFoundError(f"checkpoint step {step} not in {directory} (complete steps: "
                            f"{steps or 'none'})")
  return int(step)


def _manager(workdir: str):
  import orbax.checkpoint as ocp
  directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  options = ocp.CheckpointManagerOptions(create=False, read_only=True)
  return ocp.CheckpointManager(directory, options=options, item_names=ITEM_NAMES)


def restore_variables(workdir: str, fm, config, step: Optional[int] = None, mesh=None
                      ) -> Tuple[Dict[str, Any], int]:
  """(variables, step): the evaluation parameters of checkpoint `step` (latest: None) with the
  model state merged in, laid out on `mesh` (default: the config's mesh) by the parameters'
  logical axes. Reads only those tensors (Orbax partial restore of the `state` item)."""
  import orbax.checkpoint as ocp
  from arjax import parallel
  step = resolve_step(workdir, step)
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
  rules = [tuple(r) for r in config.sharding_rules]
  manager = _manager(workdir)
  try:
    # The files must be as the trainer wrote them, as when it resumes (arjax.train.checkpoint).
    where = f"checkpoint step {step} in {manager.directory}"
    problems = verify_step(os.path.join(manager.directory, str(step)))
    if problems:
      raise CheckpointCorruptError(f"{where} is corrupt: {'; '.join(problems)}")
    if problems is None:
      _log.warning("%s has no %s (written before checkpoints carried digests): loading it "
                   "unverified", where, DIGESTS_FILE)
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    expected = {**flat_shapes(fm.abstract_params),
                **flat_shapes(fm.abstract_model_state, MODEL_STATE_PREFIX)}
    check_shapes(saved_shapes(meta), expected, f"{manager.directory}/{step}")
    # The trainer evaluates with the EMA when it keeps one (arjax.train.loop.Experiment
    # .eval_params); the checkpoint's TrainState holds both under these names.
    key = "ema_params" if config.train.get("ema_decay", 0.0) > 0 else "params"
    abstract = {key: fm.abstract_params}
    if "model_state_shapes" in meta and fm.has_model_state:
      abstract["model_state"] = fm.abstract_model_state
    shardings = parallel.state_shardings(abstract, fm.axes, mesh, rules)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          abstract, shardings)
    restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(sharding=s), shardings)
    state = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=restore_args, partial_restore=True)))["state"]
  finally:
    manager.close()
  return fm.merge_model_state(state[key], state.get("model_state", {})), step


def load(workdir: str, step: Optional[int] = None, *, mesh=None, tokenizer=None):
  """(FunctionalModel, variables, config) of run `workdir` at checkpoint `step` (latest: None).

  `variables` are what the trainer evaluates with (`Experiment.eval_params`): the parameters,
  or their EMA when train.ema_decay > 0, with the model state merged in; `fm.bind(variables)`
  gives the module. `tokenizer` overrides the tokenizer the generator decodes through
  (default: `generator_tokenizer(config)`). No optimizer is built and no data set is opened.
  """
  from arjax.core.functional import FunctionalModel
  from arjax.models import build_model
  config = load_workdir_config(workdir)
  tok = generator_tokenizer(config) if tokenizer is None else tokenizer
  fm = FunctionalModel.abstract(lambda: build_model(config, seed=config.seed, tokenizer=tok))
  variables, _ = restore_variables(workdir, fm, config, step, mesh)
  return fm, variables, config


# -- trained tokenizers, frozen ------------------------------------------------------------------
class TrainedTokenizer:
  """A tokenizer run (model 'autoencoder') restored for inference, its parameters frozen.

  `encode` / `decode` are jax functions (jitted; also callable inside another jit, where the
  frozen parameters enter as constants): what a cached-token generator decodes through and
  what the token cache encodes with.
  """

  def __init__(self, workdir: str, step: Optional[int] = None):
    if not os.path.isdir(workdir):
      raise FileNotFoundError(f"tokenizer checkpoint workdir {workdir!r} not found")
    config = load_workdir_config(workdir)
    if config.model.get("name") != "autoencoder":
      raise ValueError(f"{workdir!r} holds a {config.model.get('name')!r} run, not a tokenizer "
                       "(model.name='autoencoder')")
    from arjax.core.functional import FunctionalModel, abstract_module
    from arjax.models import build_model
    # Built under eval_shape: its static attributes (vocabulary, grid) without allocation.
    m = abstract_module(lambda: build_model(config, seed=config.seed))
    self.fm = FunctionalModel(m)
    self.variables, self.step = restore_variables(workdir, self.fm, config, step)
    self.workdir, self.config = workdir, config
    self.vocab_size = int(m.vocab_size)
    self.grid = tuple(int(g) for g in m.grid)
    self.tokens_per_image = int(m.tokens_per_image)
    self.continuous = self.vocab_size == 0
    q = config.model.get("quantizer", {})
    self.latent_dim = int(q.get("latent_dim", 0)) if q.get("name") == "kl" else 0  # D, or 0.
    self.image_shape = (m.image_size, m.image_size, m.channels)
    fm = self.fm
    self._encode = jax.jit(lambda v, images: fm.bind(v).encode(images))
    self._decode = jax.jit(lambda v, tokens: fm.bind(v).decode(tokens))
    # HART's hybrid multi-scale quantizer: the continuous residual f - f_hat_discrete too.
    self.hybrid = q.get("name") == "multiscale" and bool(q.get("hybrid", False))

    def hybrid(v, images):
      from arjax.models.autoencoder import to_float
      ae = fm.bind(v)
      tokens, _, r = ae.quantizer.hybrid_split(ae.latents(to_float(images, ae.image_size,
                                                                   ae.channels)))
      return tokens, r.reshape(r.shape[0], -1, r.shape[-1])

    self._encode_hybrid = jax.jit(hybrid)

  def encode_hybrid(self, images) -> Tuple[jax.Array, jax.Array]:
    """uint8 [B, H, W, C] -> (tokens int32 [B, N], residual float32 [B, s^2, Dv]): a hybrid
    run's (quantizer.hybrid=True) tokens and continuous residual on the last scale's s x s grid."""
    if not self.hybrid:
      raise ValueError(f"tokenizer run {self.workdir!r} is not hybrid (model.quantizer.name="
                       f"'multiscale' with quantizer.hybrid=True): it has no residual")
    return self._encode_hybrid(self.variables, images)

  def encode(self, images) -> jax.Array:
    """uint8 [B, H, W, C] -> int32 [B, N] (continuous: float32 [B, N, D])."""
    return self._encode(self.variables, images)

  def decode(self, tokens) -> jax.Array:
    """int32 [B, N] (continuous: float [B, N, D]) -> uint8 [B, H, W, C]."""
    return self._decode(self.variables, tokens)

  def describe(self) -> Dict[str, Any]:
    return {"workdir": os.path.abspath(self.workdir), "step": int(self.step),
            "vocab_size": self.vocab_size, "grid": list(self.grid),
            "tokens_per_image": self.tokens_per_image, "continuous": self.continuous,
            "latent_dim": self.latent_dim, "hybrid": self.hybrid}


_LOADED: Dict[Tuple[str, Optional[int]], TrainedTokenizer] = {}


def load_tokenizer(workdir: str, step: Optional[int] = None) -> TrainedTokenizer:
  """Checkpoint `step` (latest: None) of tokenizer run `workdir`, restored once per process."""
  key = (os.path.abspath(workdir), step)
  if key not in _LOADED:
    _LOADED[key] = TrainedTokenizer(workdir, step)
  return _LOADED[key]


def generator_tokenizer(config):
  """The tokenizer a generator of `config` decodes through, when it needs a trained one.

  None when `config.tokenizer.checkpoint` is empty (the model builds its tokenizer from the
  config alone); otherwise the config's tokenizer (`'cached'`) with the frozen tokenizer run
  `tokenizer.checkpoint` as its decoder, checked to have the config's vocabulary and grid.
  Hand it to `arjax.models.build_model(config, tokenizer=...)`.
  """
  from arjax.tokenizers import build_tokenizer
  workdir = config.tokenizer.get("checkpoint", "")
  if not workdir:
    return None
  tok = build_tokenizer(config)
  if not hasattr(tok, "with_decoder"):
    raise ValueError(f"tokenizer.checkpoint={workdir!r} is set but tokenizer "
                     f"{config.tokenizer.name!r} takes no trained tokenizer (only 'cached' does)")
  if not os.path.isfile(os.path.join(workdir, "config.json")):
    raise FileNotFoundError(f"tokenizer.checkpoint={workdir!r}: no tokenizer run there "
                            f"({os.path.join(workdir, 'config.json')} not found)")
  return tok.with_decoder(load_tokenizer(workdir))

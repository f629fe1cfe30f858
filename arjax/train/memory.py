"""Per-device memory: byte accounting from shardings, and ahead-of-time compiles of the step.

Two sources, both per device:

  * exact bytes of sharded state from each leaf's shape, dtype and NamedSharding
    (`state_bytes`): parameters, optimizer state, EMA; nothing is allocated;
  * XLA's own accounting of the compiled train step (`compiled_memory`, from
    `compiled.memory_analysis()`): arguments, outputs, donated (aliased) bytes and temporaries
    (activations, gradients and workspace), and the peak they imply.

`aot_train_step` lowers and compiles the train step of a config for any mesh from
`jax.ShapeDtypeStruct`s only (no data, no parameters), on fake CPU devices or on a TPU
topology from libtpu, which is how `python -m arjax.inspect --mesh` sizes a paper-size config
for a pod before renting one. `ReportingStep` wraps the trainer's jitted step: its first call
compiles ahead of time, logs the per-device bytes, and then runs the jitted step (jax reuses
the executable just compiled).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

_log = logging.getLogger("arjax.train")


def shard_shape(shape, sharding) -> tuple:
  """Per-device shape of an array of `shape` under `sharding` (ceil for uneven splits)."""
  if not isinstance(sharding, NamedSharding):
    return tuple(shape)
  mesh = sharding.mesh
  out = []
  for i, d in enumerate(shape):
    entry = sharding.spec[i] if i < len(sharding.spec) else None
    axes = () if entry is None else (entry if isinstance(entry, (tuple, list)) else (entry,))
    n = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
    out.append(-(-d // n))
  return tuple(out)


def tree_bytes_per_device(tree, shardings) -> int:
  """Bytes one device holds of `tree` (arrays or ShapeDtypeStructs) laid out by `shardings`."""
  total = 0
  for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(
      shardings, is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))):
    total += int(np.prod(shard_shape(leaf.shape, s))) * np.dtype(leaf.dtype).itemsize
  return total


def tree_bytes(tree) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_bytes(abstract_state, shardings) -> Dict[str, int]:
  """Per-device bytes of a TrainState's parts: params, opt_state, ema_params, other."""
  out = {}
  for name in ("params", "opt_state", "ema_params"):
    out[name] = tree_bytes_per_device(getattr(abstract_state, name), getattr(shardings, name))
  everything = tree_bytes_per_device(abstract_state, shardings)
  out["other"] = everything - sum(out.values())
  return out


def compiled_memory(compiled) -> Dict[str, int]:
  """Per-device bytes from XLA's memory analysis of a compiled executable.

  peak = arguments + outputs - aliased (donated buffers reused for outputs) + temporaries.
  """
  m = compiled.memory_analysis()
  if m is None:  # some backends give no analysis.
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
         ("argument", "output", "alias", "temp", "generated_code")}
  out["peak"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
  return out


def gib(n: float) -> str:
  return f"{n / 2**30:.3f} GiB" if n >= 2**28 else f"{n / 2**20:.2f} MiB"


def format_report(state: Dict[str, int], compiled: Dict[str, int]) -> str:
  parts = [f"params {gib(state['params'])}", f"optimizer state {gib(state['opt_state'])}"]
  if state.get("ema_params"):
    parts.append(f"EMA {gib(state['ema_params'])}")
  if compiled:
    parts.append(f"activations+temporaries {gib(compiled['temp'])}")
    parts.append(f"peak {gib(compiled['peak'])}")
  return "per-device memory: " + ", ".join(parts)


class ReportingStep:
  """The trainer's jitted step; its first call compiles it ahead of time and logs memory.

  Logged once, before the first step runs: per-device bytes of parameters, optimizer state,
  EMA (from the shardings) and temporaries/peak (XLA's analysis of the compiled step).
  `report` holds the same numbers.
  """

  def __init__(self, jitted: Callable, abstract_state, shardings, log: Callable = _log.info):
    self.jitted = jitted
    self.state = state_bytes(abstract_state, shardings)
    self.report: Optional[Dict[str, Any]] = None
    self._log = log

  def __call__(self, state, batch):
    if self.report is None:
      t0 = time.time()
      try:
        compiled = compiled_memory(self.jitted.lower(state, batch).compile())
      except Exception as e:  # pylint: disable=broad-except  # a report must never stop training.
        _log.warning("memory analysis of the train step failed: %s", e)
        compiled = {}
      self.report = {"state": self.state, "compiled": compiled}
      self._log("%s (compiled in %.1fs)", format_report(self.state, compiled), time.time() - t0)
    return self.jitted(state, batch)


# -- ahead-of-time compile of a config's train step --------------------------------------------
def abstract_batch(config, batch_size: int, sharding) -> Dict[str, jax.ShapeDtypeStruct]:
  """The train batch as ShapeDtypeStructs: token ids int32 [B, N] and labels int32 [B].

  Token ids stand in for images: the models read `batch['tokens']` when present, and the
  tokenizer's own encode is negligible next to the step, so no data source is opened.
  """
  from arjax.tokenizers import build_tokenizer
  n = build_tokenizer(config).tokens_per_image
  return {"tokens": jax.ShapeDtypeStruct((batch_size, n), jnp.int32, sharding=sharding(2)),
          "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32, sharding=sharding(1))}


class TrainStepParts:
  """A config's jitted train step on a mesh, with abstract inputs, built without any data.

  Attributes: fm (FunctionalModel, abstract), tx, abstract (TrainState of ShapeDtypeStruct),
  shardings (TrainState of NamedSharding), state_spec (abstract with shardings), batch_spec,
  step (jitted, state donated), init (jitted: initial state straight into its shardings).
  """

  def __init__(self, config, mesh, batch_size: Optional[int] = None):
    from arjax import parallel
    from arjax.models import build_model
    from arjax.parallel import checks
    from arjax.parallel.activations import with_activation_sharding
    from arjax.core.functional import FunctionalModel
    from arjax.train.optim import learning_rate_schedule, make_optimizer
    from arjax.train.state import initial_state
    from arjax.train.step import make_train_step

    rules = [tuple(r) for r in config.sharding_rules]
    t = config.train
    batch_size = int(t.batch_size if batch_size is None else batch_size)
    checks.check_batch_divisible(batch_size, mesh, rules, process_count=1)
    self.fm = FunctionalModel.abstract(lambda: build_model(config, seed=config.seed))
    checks.check_fsdp_layout(self.fm.abstract_params, self.fm.axes, mesh, rules)
    self.tx = make_optimizer(t)
    ema = t.ema_decay > 0
    self.abstract = jax.eval_shape(lambda p, s: initial_state(p, self.tx, config.seed, ema, s),
                                   self.fm.abstract_params, self.fm.abstract_model_state)
    self.shardings = parallel.state_shardings(self.abstract, self.fm.axes, mesh, rules)
    self.state_spec = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), self.abstract,
        self.shardings)
    self.batch_spec = abstract_batch(config, batch_size,
                                     lambda ndim: parallel.batch_sharding(mesh, rules, ndim))
    step = make_train_step(self.fm, self.tx, learning_rate_schedule(t), t.ema_decay)
    self.step = jax.jit(with_activation_sharding(step, mesh, rules),
                        in_shardings=(self.shardings, None), out_shardings=(self.shardings, None),
                        donate_argnums=(0,))

    def init():
      fm = FunctionalModel(build_model(config, seed=config.seed))
      return initial_state(fm.initial_params(), self.tx, config.seed, ema,
                           fm.initial_model_state())

    self.init = jax.jit(init, out_shardings=self.shardings)


def state_report(config, mesh) -> Dict[str, Any]:
  """Per-device bytes of the train state on `mesh`, from the shardings alone (no compile).

  Exact for parameters, optimizer state and EMA; says nothing of activations. Seconds even for
  billion-parameter configs, where `aot_train_step` compiles for minutes.
  """
  parts = TrainStepParts(config, mesh)
  return {"state": state_bytes(parts.abstract, parts.shardings), "compiled": {},
          "compile_seconds": None, "devices": int(mesh.devices.size),
          "mesh": {k: int(v) for k, v in mesh.shape.items()},
          "platform": str(mesh.devices.flat[0].platform),
          "device_kind": str(getattr(mesh.devices.flat[0], "device_kind", "?"))}


def aot_train_step(config, mesh) -> Dict[str, Any]:
  """Lowers and compiles the train step of `config` on `mesh` from shapes alone.

  Returns per-device bytes: "state" (from the shardings), "compiled" (XLA's analysis), and
  "compile_seconds". `mesh` may hold fake CPU devices or TPU topology devices (libtpu).
  """
  parts = TrainStepParts(config, mesh)
  t0 = time.time()
  compiled = parts.step.lower(parts.state_spec, parts.batch_spec).compile()
  seconds = time.time() - t0
  return {"state": state_bytes(parts.abstract, parts.shardings),
          "compiled": compiled_memory(compiled), "compile_seconds": seconds,
          "devices": int(mesh.devices.size), "mesh": {k: int(v) for k, v in mesh.shape.items()},
          "platform": str(mesh.devices.flat[0].platform),
          "device_kind": str(getattr(mesh.devices.flat[0], "device_kind", "?"))}


def fits(report: Dict[str, Any], hbm_gib: float) -> Optional[bool]:
  peak = report.get("compiled", {}).get("peak")
  return None if peak is None else bool(peak <= hbm_gib * 2**30)

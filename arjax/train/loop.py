"""`train_and_evaluate(config, workdir)`: the one training loop, for every model.

Sharded by jit over the config's mesh (logical-axis rules), Orbax checkpoints with the data
iterator, automatic resume, SIGTERM -> save and exit 0, periodic metrics through a clu
MetricWriter (TensorBoard event file + metrics.jsonl; arjax.train.writer), progress lines with
clu's ReportProgress (steps/s, ETA), and evaluators chosen by name with their own intervals
(config.eval.evaluators; by default the model kind's: generators test bits/dim and a sample
grid, tokenizers reconstruction metrics and grid; arjax.train.evaluators).
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Dict, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from arjax import data as data_lib
from arjax import loading
from arjax import parallel
from arjax.parallel import checks  # [scale] layout checks, fault hook
from arjax.parallel.activations import with_activation_sharding
from arjax.models import build_model
from arjax.train.checkpoint import Checkpointer, check_keep
from arjax.train import memory  # [scale] per-device memory report of the first step
from arjax.train.evaluation import evaluation_kind
from arjax.train.evaluators import build_evaluators, configured_evaluators, due, run_evaluators
from arjax.train.lock import LOCK_FILE, WorkdirLock
from arjax.core.functional import FunctionalModel, abstract_module
from arjax.train.optim import learning_rate_schedule, make_optimizer
from arjax.train.state import TrainState, initial_state
from arjax.train.step import make_eval_step, make_train_step
from arjax.train.writer import ReportProgress, create_writer

_log = logging.getLogger("arjax.train")


class NonFiniteError(FloatingPointError):
  pass


def check_workdir(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    # One probe file per process: several processes share a workdir, and one process must not
    # remove the probe another is still checking.
    probe = os.path.join(workdir, f".write_probe.{jax.process_index()}.{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"workdir {workdir!r} is not writable: {e.strerror}") from None


class Experiment:
  """Everything built from a config on a mesh: model, optimizer, shardings, jitted steps.

  Used by the trainer, the sampler and the evaluator, so they agree on the model and layout.
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh=None, check_data: bool = True):
    self.config = config
    self.mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
    self.rules = [tuple(r) for r in config.sharding_rules]
    self._eval_step = None   # built once (eval_step)
    self._samplers = {}      # SamplingConfig -> sampler, built once each (sampler)
    self._cache = {}         # key -> jitted evaluation function (cached)
    # A generator on a token cache decodes its samples through the tokenizer run named by
    # tokenizer.checkpoint: restored here (parameters only, frozen) and handed to the model,
    # which never restores a run itself. None for every other tokenizer.
    self.tokenizer = loading.generator_tokenizer(config)
    # Built under eval_shape (no allocation); kept for static attributes (vocab_size, kind).
    self.abstract_model = abstract_module(
        lambda: build_model(config, seed=config.seed, tokenizer=self.tokenizer))
    self.fm = FunctionalModel(self.abstract_model)
    # What the model is evaluated as: its default evaluators (arjax.train.evaluators).
    self.evaluation = evaluation_kind(self.abstract_model)
    # Sampling a converted or trained model needs no data set (check_data=False, e.g. ImageNet
    # absent on the sampling machine); training and bits/dim still fail at their iterator.
    self.info = data_lib.dataset_info(config.data) if check_data else None
    if check_data:
      self._check_data_fits_model()
    t = config.train
    self.schedule = learning_rate_schedule(t)
    self.tx = make_optimizer(t)
    self.param_shardings = parallel.state_shardings(self.fm.abstract_params, self.fm.axes,
                                                    self.mesh, self.rules)

  def _check_data_fits_model(self):
    if self.info["image_shape"] is None:  # a token cache or text: no images to tokenize.
      tokens = self.info["shapes"].get("tokens")
      n = self.abstract_model.tokenizer.tokens_per_image
      if tokens is not None and getattr(self.abstract_model.tokenizer, "is_text", False) and (
          tokens[0] != n):
        raise ValueError(f"data.seq_len gives sequences of {tokens[0]} tokens but "
                         f"tokenizer.length={n}; set them equal")
      # A model that needs more than tokens from a cache (HART: the continuous residual).
      check = getattr(self.abstract_model, "check_cache_fields", None)
      if check is not None:
        check(self.info["shapes"], self.config.data.source)
      return
    shape = tuple(self.info["image_shape"])
    # Parameters (and model state) go in as eval_shape arguments (tracers), so a learned
    # tokenizer's weights are never read as concrete arrays.
    # A model that encodes images itself (HART: tokens and the continuous residual through its
    # tokenizer run) is checked through its own `encode_images`.
    def encode(variables, x):
      m = self.fm.bind(variables)
      return m.encode_images(x) if hasattr(m, "encode_images") else m.tokenizer.encode(x)
    try:
      jax.eval_shape(encode, self.fm.merge_model_state(self.fm.abstract_params,
                                                       self.fm.abstract_model_state),
                     jax.ShapeDtypeStruct((1,) + shape, jnp.uint8))
    except ValueError as e:
      raise ValueError(f"data {self.config.data.source!r} gives images {shape} that the "
                       f"tokenizer cannot take: {e}") from None
    num_classes = self.config.model.get("num_classes")  # None: an unconditional model.
    if (self.info["num_classes"] and num_classes is not None
        and self.info["num_classes"] > num_classes):
      raise ValueError(f"data has {self.info['num_classes']} classes but "
                       f"model.num_classes={num_classes}")

  # -- state -----------------------------------------------------------------------------------
  def abstract_state(self):
    t = self.config.train
    abstract = jax.eval_shape(
        lambda p, s: initial_state(p, self.tx, self.config.seed, t.ema_decay > 0, s),
        self.fm.abstract_params, self.fm.abstract_model_state)
    shardings = parallel.state_shardings(abstract, self.fm.axes, self.mesh, self.rules)
    return abstract, shardings

  def init_state(self) -> TrainState:
    """Initialises parameters directly into their shardings (no host copy of the model)."""
    abstract, shardings = self.abstract_state()
    config, t = self.config, self.config.train

    def init():
      fm = FunctionalModel(build_model(config, seed=config.seed, tokenizer=self.tokenizer))
      return initial_state(fm.initial_params(), self.tx, config.seed, t.ema_decay > 0,
                           fm.initial_model_state())

    return jax.jit(init, out_shardings=shardings)()

  def batch_shardings(self, batch: Dict[str, np.ndarray]):
    return {k: parallel.batch_sharding(self.mesh, self.rules, v.ndim) for k, v in batch.items()}

  def to_global(self, batch: Dict[str, np.ndarray]):
    shardings = self.batch_shardings(batch)
    return {k: jax.make_array_from_process_local_data(shardings[k], v) for k, v in batch.items()}

  def jit_train_step(self, state_shardings):
    step = make_train_step(self.fm, self.tx, self.schedule, self.config.train.ema_decay,
                           self.config.train.grad_accum_steps)
    step = with_activation_sharding(step, self.mesh, self.rules)
    return jax.jit(step, in_shardings=(state_shardings, None),
                   out_shardings=(state_shardings, None), donate_argnums=(0,))

  def eval_params(self, state: TrainState):
    """What evaluation binds (`fm.bind`): the parameters (their EMA when train.ema_decay > 0)
    with the carried model state merged in (the trained EMA codebook, not the initial one)."""
    params = state.ema_params if self.config.train.ema_decay > 0 else state.params
    return self.fm.merge_model_state(params, state.model_state)

  # -- evaluation ------------------------------------------------------------------------------
  def bits_per_dim(self, params, split: str = "test", num_examples: int = -1) -> Dict[str, float]:
    """Mean NLL over every token of the split (padded last batch masked, nothing dropped)."""
    e = self.config.eval
    step = self.eval_step()
    it = data_lib.make_iterator(self.config.data, split=split, global_batch_size=e.batch_size,
                                seed=0, shuffle=False, num_epochs=1, drop_remainder=False)
    total, count, seen = 0.0, 0.0, 0
    for batch in it:
      if 0 <= num_examples <= seen:
        break
      # [scale] count global examples: each process holds rows [i*b, (i+1)*b) of the batch.
      b = len(batch["label"])
      if 0 <= num_examples < seen + b * jax.process_count():
        batch = dict(batch)
        rows = seen + jax.process_index() * b + np.arange(b)
        batch["mask"] = batch["mask"] * (rows < num_examples)
      seen += b * jax.process_count()
      s, c = step(params, self.to_global(batch))
      total += float(s)
      count += float(c)
    nll = total / max(count, 1.0)
    return {"nll": nll, "bits_per_dim": nll / math.log(2.0), "num_tokens": count}

  def eval_step(self):
    """The jitted evaluation step, built once per Experiment: every evaluation of a run reuses
    its compiled program (a fresh jax.jit per evaluation compiled it again each time)."""
    if self._eval_step is None:
      self._eval_step = jax.jit(
          with_activation_sharding(make_eval_step(self.fm), self.mesh, self.rules))
    return self._eval_step

  def cached(self, key, build):
    """build() once per Experiment and key (a jitted evaluation function): every evaluation of a
    run reuses the compiled program."""
    if key not in self._cache:
      self._cache[key] = build()
    return self._cache[key]

  def sampler(self, sampling):
    """The sampler for `sampling` (a SamplingConfig), built once per Experiment and options, so
    its compiled sampling programs are reused by every evaluation of the run."""
    from arjax.sampling import build_sampler
    if sampling not in self._samplers:
      # The sampler the model's order needs.
      self._samplers[sampling] = build_sampler(self.fm, sampling, self.config)
    return self._samplers[sampling]

  def sample_grid(self, params, rng, per_class: Optional[int] = None, **overrides):
    from arjax.sampling import SamplingConfig, class_grid_labels
    e = self.config.eval
    sampling = SamplingConfig(cfg_scale=overrides.get("cfg_scale", e.cfg_scale),
                              temperature=overrides.get("temperature", e.temperature),
                              top_k=overrides.get("top_k", e.top_k),
                              top_p=overrides.get("top_p", e.top_p))
    per_class = per_class or e.samples_per_class
    labels = class_grid_labels(self.config.model.num_classes, per_class)
    images = self.sampler(sampling).sample_images(params, labels, rng)
    return np.asarray(jax.device_get(images)), np.asarray(labels)


class _Preemption:
  """SIGTERM -> the loop saves a checkpoint between steps and returns (exit 0).

  A Python signal handler sets a flag. With several processes (a jax.distributed job), every
  process all-gathers the flags at every step (`should_stop`), so a signal to any process, in
  any order and timing, stops all of them at the same step, where they save one checkpoint
  together (a process that stopped alone would leave the others waiting in the next step's
  collectives). The handler is installed after jax.distributed.initialize, replacing the
  preemption notifier it installs (whose sync-point protocol let the processes of a two-process
  CPU job with staggered signals stop at different steps in our test). After a stop, a later
  SIGTERM (a launcher forwarding it, the second of staggered signals) is absorbed, not fatal:
  the checkpoint is written."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    _log.warning("SIGTERM received: checkpointing and exiting")
    self.requested = True

  def should_stop(self) -> bool:
    """Whether to save and stop now: the same answer on every process, at every call."""
    if jax.process_count() == 1:
      return self.requested
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray(self.requested, np.int32))
    if flags.max() and not self.requested:
      _log.warning("another process received SIGTERM: checkpointing and exiting")
    return bool(flags.max())

  def __exit__(self, *exc):
    if self._old is None:
      return
    if self.requested:
      signal.signal(signal.SIGTERM, lambda signum, frame: _log.warning(
          "SIGTERM received again: the run has already stopped"))
    else:
      signal.signal(signal.SIGTERM, self._old)


def _meta(config) -> Dict[str, Any]:
  return {"config": json.loads(config.to_json_best_effort())}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming from its newest intact checkpoint) and evaluates.

  Returns the final metrics (test bits/dim, steps, paths of the sample grid). Holds the workdir
  lock (arjax.train.lock) for the whole run: a second trainer on the workdir is refused.
  """
  check_keep(config.train.keep_checkpoints)
  configured_evaluators(config)  # unknown evaluator names, fields and intervals: at once.
  parallel.maybe_initialize_distributed()
  # From here (after jax.distributed has installed its preemption notifier): a SIGTERM while
  # the job compiles stops it after its first step, on every process together.
  created = not os.path.isdir(workdir)
  try:
    with _Preemption() as preempt:
      check_workdir(workdir)
      with WorkdirLock(workdir, process_index=jax.process_index(),
                       process_count=jax.process_count()):
        return _train_and_evaluate(config, workdir, preempt)
  except BaseException:
    if created:
      _remove_if_untouched(workdir)
    raise


def _remove_if_untouched(workdir: str) -> None:
  """A run that fails before writing anything (a bad data file, a config misfit found at build)
  leaves no workdir behind: removed when this call created it and it holds only the released
  lock file. Only process 0 removes it (the others share it)."""
  if jax.process_index() != 0:
    return
  try:
    if set(os.listdir(workdir)) <= {LOCK_FILE}:
      for name in os.listdir(workdir):
        os.remove(os.path.join(workdir, name))
      os.rmdir(workdir)
  except OSError:  # removing is a courtesy; the run's own error is the one to report.
    pass


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preempt: _Preemption) -> Dict[str, Any]:
  t = config.train
  exp = Experiment(config)
  evaluators = build_evaluators(config, exp.evaluation)  # before any step: a misfit fails now.
  checks.check_experiment(exp)  # [scale] batch vs data-parallel degree, FSDP layout
  abstract, shardings = exp.abstract_state()
  ckpt = Checkpointer(workdir, keep=t.keep_checkpoints, async_save=t.async_checkpointing)
  it = data_lib.make_iterator(config.data, split="train", global_batch_size=t.batch_size,
                              seed=config.seed, shuffle=True, num_epochs=None)
  it = it.to_device(exp.to_global)  # global arrays, data.device_prefetch batches ahead
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  # The newest intact step (digests verified; corrupt newer steps are named and moved aside).
  restored = ckpt.restore_latest(target)
  if restored is not None:
    latest, state, data_state = restored
    if data_state:  # a converted checkpoint (arjax.convert) has no iterator state yet.
      it.set_state(data_state)
    _log.info("resumed from %s/%d", ckpt.directory, latest)
  else:
    state = exp.init_state()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
  writer = create_writer(workdir)
  train_step = exp.jit_train_step(shardings)
  train_step = memory.ReportingStep(train_step, abstract, shardings)  # [scale] per-device bytes
  start = int(jax.device_get(state.step))
  if jax.process_index() == 0:
    # clu's table of every parameter (shape, size, mean, std) from the abstract shapes (no
    # transfer of sharded values), in the workdir next to the metrics.
    from clu import parameter_overview
    with open(os.path.join(workdir, "parameters.txt"), "w") as f:
      f.write(parameter_overview.get_parameter_overview(exp.fm.abstract_params,
                                                        include_stats=False) + "\n")
  _log.info("model %s: %s parameters (table: %s); training steps %d -> %d", config.model.name,
            f"{exp.fm.param_count():,}", os.path.join(workdir, "parameters.txt"), start,
            t.num_steps)

  acc = None
  step = start
  # clu's progress estimates (steps/s, ETA), reported exactly at the logged steps; this first
  # call starts its clock (the first interval includes the first step's compilation).
  progress = ReportProgress(num_train_steps=t.num_steps, every_steps=t.log_every,
                            batch_size=t.batch_size)
  progress(step)
  results: Dict[str, Any] = {}
  try:
    while step < t.num_steps:
      batch = next(it)
      state, m = train_step(state, batch)
      step += 1
      checks.fault_point("step", step)  # [scale] crash-test hook (ARJAX_FAULT_INJECT)
      acc = m if acc is None else acc.merge(m)
      if step % t.log_every == 0 or step == t.num_steps:
        # Read first (waits for the step), so the progress clock counts finished steps.
        values = {k: float(v) for k, v in acc.compute().items()}
        nonfinite = int(jax.device_get(state.nonfinite))
        if not progress(step):  # triggers at exactly these steps (every log_every, the last).
          raise RuntimeError(f"ReportProgress did not report at logged step {step}")
        values.update(progress.values)  # steps_per_sec, uptime, eta_seconds, examples_per_sec
        writer.write_scalars(step, values)
        shown = "  ".join(f"{k} {values[k]:.4f}" for k in ("loss", "bits_per_dim", "psnr")
                          if k in values)
        _log.info("step %d/%d  %s  %.2f steps/s  ETA %s", step, t.num_steps, shown,
                  values["steps_per_sec"],
                  time.strftime("%H:%M:%S", time.gmtime(values["eta_seconds"])))
        acc = None
        if nonfinite >= t.max_nonfinite_steps:
          raise NonFiniteError(
              f"{nonfinite} consecutive non-finite steps ending at step {step}; parameters "
              "were kept at their last finite values and no NaN was checkpointed")
      else:
        progress(step)  # clu's periodic actions are called after every step.
      if step % t.checkpoint_every == 0 and step < t.num_steps:
        ckpt.save(step, state, it.get_state(), _meta(config))
        checks.fault_point("save", step)  # [scale] kill while the async save is in flight
      if step < t.num_steps and due(evaluators, step):
        run_evaluators(due(evaluators, step), exp, state, writer, workdir, step)
      if preempt.should_stop():
        ckpt.save(step, state, it.get_state(), _meta(config), force=True)
        ckpt.close()
        writer.close()
        _log.warning("preempted at step %d: checkpoint saved", step)
        return {"preempted": True, "step": step}
    ckpt.save(step, state, it.get_state(), _meta(config), force=True)
    results = run_evaluators(evaluators, exp, state, writer, workdir, step)  # all, at the end.
  finally:
    ckpt.close()
    writer.close()
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "final_metrics.json"), "w") as f:
      json.dump(results, f, indent=2)
  return results

"""Evaluators chosen by name, each with its own interval (registry `EVALUATORS`).

A config lists them under `config.eval.evaluators`, a node {NAME: {every: N, ...fields}}:

  c.eval.evaluators = ml_collections.ConfigDict({
      "bits_per_dim": {"every": 500},
      "sample_grid": {"every": 1000},
      "sample_quality": {"every": 2000, "num_samples": 1000}})

Each runs at every multiple of its `every` (0: `train.eval_every`) before the last step, and
every listed evaluator runs once more at the end of training (its results, merged, are
final_metrics.json). A config that lists none gets its model kind's defaults
(`DEFAULT_EVALUATORS`), every `train.eval_every` steps:

  generator  bits_per_dim, sample_grid
  text       bits_per_char, text_samples
  tokenizer  reconstruction

The registered evaluators (their fields' dataclasses declare what each reads; KINDS, the model
kinds it evaluates, arjax.train.evaluation.evaluation_kind):

  bits_per_dim    generator  test bits/dim and NLL over eval.num_examples test examples.
  sample_grid     generator  a class grid of samples (eval.* sampling options): PNG in
                             WORKDIR/images, image in the event file, and the loss curves.
  sample_quality  generator  offline-classifier FD, class accuracy, precision and recall of
                             `num_samples` class-balanced samples (bundled 28x28 data only;
                             arjax.evaluate.sample_metrics; not comparable with Inception FIDs).
  bits_per_char   text       test (validation) bits/char and NLL: the model's eval loss per
                             character token (a text model with another loss, e.g. a diffusion
                             LM's bound, reports its own bound here).
  text_samples    text       eval.samples_per_class samples to WORKDIR/samples/text_STEP.txt.
  reconstruction  tokenizer  test-split reconstruction metrics and an original/reconstruction
                             grid (arjax.train.evaluation.tokenizer_metrics).

Every entry is `fn(exp, state, writer, workdir, step, fields) -> dict` of results: it writes its
metrics (the clu MetricWriter `writer`) and files itself. Each reuses the Experiment's compiled
programs (exp.eval_step, exp.sampler, exp.cached), so evaluation compiles once per run.
A new evaluator registers with `@EVALUATORS.register(name, fields=F)`, F a frozen dataclass
deriving from `EvaluatorFields` (its KINDS and fields); a new model kind adds its defaults to
`DEFAULT_EVALUATORS`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Callable, ClassVar, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from arjax.registry import Registry, ranged, read_fields
from arjax.train.evaluation import GRID_COLUMNS, reconstruction_grid, tokenizer_metrics
from arjax.train.writer import jsonl_path

EVALUATORS: Registry = Registry("evaluator")
DEFAULT_EVALUATORS: Dict[str, Tuple[str, ...]] = {
    "generator": ("bits_per_dim", "sample_grid"),
    "text": ("bits_per_char", "text_samples"),
    "tokenizer": ("reconstruction",),
}
_log = logging.getLogger("arjax.train")


@dataclasses.dataclass(frozen=True)
class EvaluatorFields:
  """The field every evaluator has; KINDS: the model kinds it can evaluate."""
  KINDS: ClassVar[Tuple[str, ...]] = ("generator",)
  every: int = ranged(0, lo=1, integer=True, also=(0,))  # steps between runs (0: train.eval_every).


@dataclasses.dataclass(frozen=True)
class Scheduled:
  """One evaluator of a run: its name, interval in steps, fields and function."""
  name: str
  every: int
  fields: Any
  fn: Callable[..., Dict[str, Any]]


def _where(name: str) -> str:
  return f"evaluator {name!r} (config.eval.evaluators.{name})"


def configured_evaluators(config) -> List[Scheduled]:
  """The evaluators `config.eval.evaluators` lists, checked (names, fields, intervals; one
  ValueError/KeyError naming `eval.evaluators.NAME`). Empty when the config lists none."""
  node = config.eval.get("evaluators") if "eval" in config else None
  out = []
  for name in (node.keys() if node is not None else ()):
    fn = EVALUATORS.get(name, field=f"eval.evaluators.{name}")
    entry = node[name]
    if entry is None:
      entry = {}
    if not hasattr(entry, "keys"):
      raise ValueError(f"config.eval.evaluators.{name}={entry!r}; expected a node "
                       "{every: N, ...fields}")
    fields = read_fields(EVALUATORS.fields(name), entry, _where(name), ignore=())
    out.append(Scheduled(name, fields.every or config.train.eval_every, fields, fn))
  return out


def build_evaluators(config, kind: str) -> List[Scheduled]:
  """The run's evaluators: those the config lists (checked against the model's kind), else the
  kind's defaults, every train.eval_every steps."""
  listed = configured_evaluators(config)
  if not listed:
    if kind not in DEFAULT_EVALUATORS:
      raise ValueError(f"no default evaluators for models evaluated as {kind!r}; list them in "
                       f"config.eval.evaluators (one of {EVALUATORS.names()})")
    return [Scheduled(name, config.train.eval_every, EVALUATORS.fields(name)(),
                      EVALUATORS.get(name)) for name in DEFAULT_EVALUATORS[kind]]
  for s in listed:
    kinds = type(s.fields).KINDS
    if kind not in kinds:
      fit = [n for n in EVALUATORS.names() if kind in EVALUATORS.fields(n).KINDS]
      raise ValueError(f"config.eval.evaluators.{s.name}: evaluates {'/'.join(kinds)} models; "
                       f"this model is evaluated as {kind!r} (its evaluators: {fit})")
    check = getattr(s.fields, "check", None)
    if check is not None:
      check(config, f"config.eval.evaluators.{s.name}")
  return listed


def due(evaluators: Sequence[Scheduled], step: int) -> List[Scheduled]:
  """The evaluators whose interval divides `step`."""
  return [s for s in evaluators if step % s.every == 0]


def run_evaluators(evaluators: Sequence[Scheduled], exp, state, writer, workdir: str,
                   step: int) -> Dict[str, Any]:
  """Runs `evaluators` in order; returns their results merged, with the step."""
  results: Dict[str, Any] = {"step": step}
  for s in evaluators:
    results.update(s.fn(exp, state, writer, workdir, step, s.fields))
  return results


def _rng(exp, step: int):
  return jax.random.fold_in(jax.random.key(exp.config.seed), 10_000_000 + step)


def _eval_sampling(exp):
  """The eval.* sampling options: the sample grid's, so both share one compiled sampler."""
  from arjax.sampling import SamplingConfig
  e = exp.config.eval
  return SamplingConfig(cfg_scale=e.cfg_scale, temperature=e.temperature, top_k=e.top_k,
                        top_p=e.top_p)


# -- generators ------------------------------------------------------------------------------


@EVALUATORS.register("bits_per_dim", fields=EvaluatorFields)
def bits_per_dim(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """Test bits/dim and NLL over eval.num_examples test examples."""
  t0 = time.time()
  bpd = exp.bits_per_dim(exp.eval_params(state), "test", exp.config.eval.num_examples)
  values = {"test_bits_per_dim": bpd["bits_per_dim"], "test_nll": bpd["nll"]}
  writer.write_scalars(step, values)
  writer.flush()
  _log.info("eval at step %d: test bits/dim %.4f (%.0f tokens) (%.1fs)", step,
            bpd["bits_per_dim"], bpd["num_tokens"], time.time() - t0)
  return {**values, "test_tokens": bpd["num_tokens"]}


@EVALUATORS.register("sample_grid", fields=EvaluatorFields)
def sample_grid(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """A class grid (eval.samples_per_class per class) to WORKDIR/images/samples_STEP.png and the
  event file, and the loss / grad-norm curves to WORKDIR/images/curves.png."""
  from arjax.evaluate.images import make_grid, plot_curves, save_grid
  e = exp.config.eval
  t0 = time.time()
  images, _ = exp.sample_grid(exp.eval_params(state), _rng(exp, step))
  grid_path = os.path.join(workdir, "images", f"samples_{step:07d}.png")
  if jax.process_index() == 0:
    save_grid(images, grid_path, ncol=e.samples_per_class, scale=2)
    writer.write_images(step, {"samples": make_grid(images, e.samples_per_class)})
    writer.flush()
    if os.path.isfile(jsonl_path(workdir)):
      plot_curves(jsonl_path(workdir), os.path.join(workdir, "images", "curves.png"),
                  keys=("loss", "grad_norm"))
  _log.info("eval at step %d: sample grid %s (%.1fs)", step, grid_path, time.time() - t0)
  return {"sample_grid": grid_path}


@dataclasses.dataclass(frozen=True)
class SampleQualityFields(EvaluatorFields):
  KINDS: ClassVar[Tuple[str, ...]] = ("generator",)
  num_samples: int = ranged(1000, lo=1, integer=True)  # class-balanced samples scored.
  batch_size: int = ranged(64, lo=1, integer=True)     # samples per sampling batch.
  k: int = ranged(3, lo=1, integer=True)               # neighbours for precision / recall.

  def check(self, config, where: str) -> None:
    """At start: bundled data (the offline classifier's) and enough samples for an FD."""
    from arjax.data.idx import BUNDLED
    if config.data.source not in BUNDLED:
      raise ValueError(f"{where}: the offline classifier exists for the bundled data "
                       f"{sorted(BUNDLED)}; data.source is {config.data.source!r}")
    from arjax.evaluate.offline import OfflineEvaluator
    dim = OfflineEvaluator(config.data.source).feature_dim
    if self.num_samples <= dim:
      raise ValueError(f"{where}.num_samples={self.num_samples}; expected more than the offline "
                       f"classifier's {dim} feature dimensions (a full-rank covariance for FD)")
    data = config.mesh.get("data", 1)
    if data > 0 and self.batch_size % data:
      raise ValueError(f"{where}.batch_size={self.batch_size} is not divisible by "
                       f"config.mesh.data={data}")


@EVALUATORS.register("sample_quality", fields=SampleQualityFields)
def sample_quality(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """FD, class accuracy, precision and recall of `num_samples` samples (eval.* sampling
  options, seed config.seed) in the offline classifier's feature space."""
  from arjax.evaluate import sample_metrics as sm
  t0 = time.time()
  samples, labels = sm.generate_samples(exp, exp.eval_params(state), fields.num_samples,
                                        seed=exp.config.seed, batch_size=fields.batch_size,
                                        sampling=_eval_sampling(exp), progress=False)
  scores = sm.offline_scores(exp.config, samples, labels, "test", k=fields.k)
  values = {f"sample_{k}": float(scores[k])
            for k in ("fd", "class_accuracy", "precision", "recall")}
  writer.write_scalars(step, values)
  writer.flush()
  _log.info("eval at step %d: %d samples: FD %.3f, class accuracy %.3f, precision %.3f, "
            "recall %.3f (offline classifier; %.1fs)", step, fields.num_samples,
            values["sample_fd"], values["sample_class_accuracy"], values["sample_precision"],
            values["sample_recall"], time.time() - t0)
  return values


# -- text ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextFields(EvaluatorFields):
  KINDS: ClassVar[Tuple[str, ...]] = ("text",)


@EVALUATORS.register("bits_per_char", fields=TextFields)
def bits_per_char(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """Test (validation) bits/char: the model's eval loss (exp.bits_per_dim) per character."""
  t0 = time.time()
  bpd = exp.bits_per_dim(exp.eval_params(state), "test", exp.config.eval.num_examples)
  values = {"test_bits_per_char": bpd["bits_per_dim"], "test_nll": bpd["nll"]}
  writer.write_scalars(step, values)
  writer.flush()
  # A model whose evaluation loss is an upper bound (a diffusion LM's NELBO) says so.
  bound = bool(getattr(exp.abstract_model, "nll_is_bound", False))
  _log.info("eval at step %d: test bits/char %.4f%s (%.0f characters) (%.1fs)", step,
            bpd["bits_per_dim"], " (upper bound: NELBO)" if bound else "", bpd["num_tokens"],
            time.time() - t0)
  return {**values, "bound": bound, "test_tokens": bpd["num_tokens"]}


def sample_text(exp, params, rng, num: int) -> List[str]:
  """`num` unconditional text samples (class 0) from the model's sampler, as strings."""
  from arjax.sampling import SamplingConfig
  e = exp.config.eval
  sampling = SamplingConfig(cfg_scale=1.0, temperature=e.temperature, top_k=e.top_k,
                            top_p=e.top_p)
  # The Experiment's sampler for these options: built and compiled once per run.
  tokens = exp.sampler(sampling).sample_tokens(params, jnp.zeros((num,), jnp.int32), rng)
  return exp.abstract_model.tokenizer.decode_text(np.asarray(jax.device_get(tokens)))


@EVALUATORS.register("text_samples", fields=TextFields)
def text_samples(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """eval.samples_per_class text samples to WORKDIR/samples/text_STEP.txt and the event file."""
  t0 = time.time()
  texts = sample_text(exp, exp.eval_params(state), _rng(exp, step),
                      exp.config.eval.samples_per_class)
  path = os.path.join(workdir, "samples", f"text_{step:07d}.txt")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write("\n\n----------\n\n".join(texts) + "\n")
    writer.write_texts(step, {"samples": "\n\n----------\n\n".join(texts)})
    writer.flush()
  _log.info("eval at step %d: text samples %s (%.1fs)", step, path, time.time() - t0)
  return {"samples": path}


# -- tokenizers ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TokenizerFields(EvaluatorFields):
  KINDS: ClassVar[Tuple[str, ...]] = ("tokenizer",)


@EVALUATORS.register("reconstruction", fields=TokenizerFields)
def reconstruction(exp, state, writer, workdir: str, step: int, fields) -> Dict[str, Any]:
  """Reconstruction metrics of eval.num_examples test images (tokenizer_metrics) and a grid
  of originals over reconstructions (WORKDIR/images/reconstructions_STEP.png, event file)."""
  from arjax.evaluate.images import make_grid, plot_curves, save_grid
  e = exp.config.eval
  t0 = time.time()
  values, r = tokenizer_metrics(exp, exp.eval_params(state), "test", e.num_examples)
  ncol = min(GRID_COLUMNS, len(r["images"]))
  grid = reconstruction_grid(r["images"], r["reconstructions"], ncol)
  grid_path = os.path.join(workdir, "images", f"reconstructions_{step:07d}.png")
  if jax.process_index() == 0:
    save_grid(grid, grid_path, ncol=ncol, scale=2)
    writer.write_images(step, {"reconstructions": make_grid(grid, ncol)})
    writer.flush()
    if os.path.isfile(jsonl_path(workdir)):
      plot_curves(jsonl_path(workdir), os.path.join(workdir, "images", "curves.png"),
                  keys=("loss", "psnr"))
  scalars = {f"test_{k}": v for k, v in values.items() if k != "num_examples"}
  writer.write_scalars(step, scalars)
  writer.flush()
  shown = "  ".join(f"{k} {v:.4f}" for k, v in scalars.items())
  _log.info("eval at step %d on %d test images: %s, grid %s (%.1fs)", step,
            values["num_examples"], shown, grid_path, time.time() - t0)
  return {**scalars, "test_examples": values["num_examples"], "reconstruction_grid": grid_path}

"""Character-level tiny Shakespeare: AR vs masked diffusion vs block diffusion at one budget.

  PYTHONPATH=. python experiments/text.py --workdir workdirs/text   (about 40 min on 2 CPU cores)

Trains, on the same network shape and the same number of optimizer steps / batch (the budget
printed at the start and stored in the results), `arjax.models.diffusion_lm` with objective
'ar', 'mdlm', 'bd3lm' b = 4 and b = 16, plus SDAR's conversion (b = 4 initialised from the
trained AR parameters and trained further), then SDTT rounds on the MDLM. For each model it
reports validation bits/char (exact for AR; for the diffusion models the NELBO bound, estimated
with one t draw per window, ± its standard error), and for its samplers tokens per forward pass,
samples/s (batch of 16, after compilation) and the bits/char of its samples under the AR model
(generative bits/char, lower = closer to what AR considers likely text). Everything goes to
WORKDIR/results.json and WORKDIR/samples.txt; a rerun resumes (finished models are skipped,
training continues from the last checkpoint every 100 steps). docs/text.md holds a recorded run.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

from arjax.core.functional import FunctionalModel  # noqa: E402
from arjax.data.text import corpus_ids, split_ids  # noqa: E402
from arjax.models.diffusion_lm import DiffusionLM, DiffusionLMFields  # noqa: E402
from arjax.nn.transformer import TransformerConfig  # noqa: E402
from arjax.sampling import SAMPLERS, SamplingConfig  # noqa: E402
from arjax.sampling.diffusion_lm import DecodeOptions  # noqa: E402
from arjax.tokenizers.char import CHARS  # noqa: E402

V = len(CHARS)


def backbone(dim=96, layers=2, heads=4):
  return TransformerConfig(num_layers=layers, num_heads=heads, dim=dim, mlp_dim=3 * dim,
                           position="rope1d")


def build(objective, seq_len, block_size=None, bb=None, noise=(0.0, 1.0)):
  f = DiffusionLMFields(objective=objective, vocab_size=V, seq_len=seq_len,
                        block_size=block_size or seq_len, noise_min=noise[0], noise_max=noise[1])
  return FunctionalModel(DiffusionLM(f, bb or backbone(), rngs=nnx.Rngs(0)))


def data():
  ids = np.asarray(corpus_ids("tinyshakespeare"))
  return split_ids(ids, "train", "tinyshakespeare"), split_ids(ids, "validation", "tinyshakespeare")


def batch_at(ids, step, batch, seq_len, seed=0):
  """Random training windows of step `step` (a pure function of (seed, step): resumable)."""
  rng = np.random.default_rng([seed, step])
  starts = rng.integers(0, len(ids) - seq_len + 1, batch)
  return ids[starts[:, None] + np.arange(seq_len)].astype(np.int32)


def _save(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    pickle.dump(jax.device_get(obj), f)
  os.replace(tmp, path)


def train(fm, path, *, steps, batch, lr, train_ids, seq_len, init=None, seed=0, log=print,
          every=100, batch_fn=None, stop_at=None):
  """AdamW (warmup 50, cosine) on the model's training loss; checkpoint every `every` steps at
  `path`; resumes from it; stops after step `stop_at` (default: steps). batch_fn(step) ->
  int32 [B, L] overrides the random windows.
  Returns (params, [(step, loss)], seconds)."""
  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 4),
                                                      max(steps, 2), lr * 0.1),
                   b1=0.9, b2=0.99, weight_decay=0.05)
  if os.path.exists(path):
    with open(path, "rb") as f:
      st = pickle.load(f)
    params, opt, start, curve, secs = st["params"], st["opt"], st["step"], st["curve"], st["secs"]
    log(f"  resumed {os.path.basename(path)} at step {start}")
  else:
    params = init if init is not None else fm.initial_params()
    opt, start, curve, secs = tx.init(params), 0, [], 0.0

  @jax.jit
  def step_fn(params, opt, x, key):
    loss, g = jax.value_and_grad(
        lambda p: fm.bind(p, rng=key).loss({"tokens": x}, train=True)[0])(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  t0 = time.time()
  run = 0.0
  for s in range(start, min(steps, stop_at or steps)):
    x = batch_fn(s) if batch_fn else batch_at(train_ids, s, batch, seq_len, seed)
    params, opt, loss = step_fn(params, opt, jnp.asarray(x), jax.random.key(seed * 100003 + s))
    run += float(loss)
    if (s + 1) % every == 0 or s + 1 == steps:
      n = (s % every) + 1
      curve.append((s + 1, run / n))
      run = 0.0
      el = secs + time.time() - t0
      log(f"  step {s + 1}/{steps} loss {curve[-1][1] / math.log(2):.3f} bits/char "
          f"({el:.0f} s)")
      _save(path, dict(params=params, opt=opt, step=s + 1, curve=curve, secs=el))
  return params, curve, secs + time.time() - t0


def eval_bpc(fm, params, val_ids, seq_len, batch=256, seed=1):
  """Validation bits/char over the non-overlapping L windows of the validation split (the
  last partial window dropped): exact NLL for AR, an unbiased estimate of the NELBO bound for
  diffusion (one t and mask per window). Returns (bits/char, standard error)."""
  n = len(val_ids) // seq_len
  x_all = val_ids[:n * seq_len].reshape(n, seq_len).astype(np.int32)
  f = jax.jit(lambda p, x, k: fm.bind(p).nelbo_terms(x, k))
  out = []
  for i in range(0, n, batch):
    x = x_all[i:i + batch]
    out.append(np.asarray(f(params, jnp.asarray(x), jax.random.key(seed + i))))
  per = np.concatenate(out) / (seq_len * math.log(2))
  return float(per.mean()), float(per.std() / math.sqrt(len(per)))


def text_of(tokens):
  return ["".join(CHARS[int(t)] for t in row) for row in np.asarray(tokens)]


def sample_stats(fm, params, name, decode=None, batch=16, seed=0, temperature=1.0):
  s = SAMPLERS.get(name)(fm, SamplingConfig(temperature=temperature, name=name),
                         decode=decode)
  tok, nfe = s.sample(params, jax.random.key(seed), batch)   # compile + warm up
  jax.block_until_ready(tok)
  t0 = time.time()
  tok, nfe = s.sample(params, jax.random.key(seed + 1), batch)
  jax.block_until_ready(tok)
  dt = time.time() - t0
  seq_len = tok.shape[1]
  return dict(tokens_per_forward=seq_len / int(nfe), forward_passes=int(nfe),
              samples_per_s=batch / dt), np.asarray(tok)


def gen_bpc(ar_fm, ar_params, tokens):
  """Bits/char of sampled sequences under the AR model (the judge)."""
  f = jax.jit(lambda p, x: ar_fm.bind(p).nelbo_terms(x, jax.random.key(0)))
  per = np.asarray(f(ar_params, jnp.asarray(tokens))) / (tokens.shape[1] * math.log(2))
  return float(per.mean())


def sdtt_round(teacher_fm, teacher, student_init, *, dt, steps, batch, lr, train_ids, seq_len,
               path, log, seed=0):
  """One SDTT round (Deschenaux & Gulcehre 2025, jdeschena/sdtt): from x_t (t ~ U[2 dt, 1]) the
  teacher takes two ancestral steps of size dt (t -> t - dt -> t - 2 dt); the target of every
  position masked in x_t is the one-hot of the token the first step revealed there, else the
  teacher's prediction at the second step; the student, one step of size 2 dt, minimises
  KL(target || student) on those positions (the 'kl-fwd' form; SDTT's default kl-bwd is not
  used). Returns the student's parameters."""
  model_t = teacher_fm.bind(teacher)
  mask_id = model_t.mask_id

  def target(x, key):
    k1, k2, k3 = jax.random.split(key, 3)
    b = x.shape[0]
    t = jax.random.uniform(k1, (b, 1), minval=2 * dt, maxval=1.0)
    xt = jnp.where(jax.random.uniform(k2, x.shape) < t, mask_id, x)
    masked = xt == mask_id
    p1 = jax.nn.softmax(model_t.mdlm_logits(xt), -1)
    ka, kb = jax.random.split(k3)
    draw = jax.random.categorical(ka, jnp.log(jnp.maximum(p1, 1e-20)))
    rev = masked & (jax.random.uniform(kb, x.shape) < dt / t)
    x1 = jnp.where(rev, draw, xt)
    p2 = jax.nn.softmax(model_t.mdlm_logits(x1), -1)
    tgt = jnp.where(rev[..., None], jax.nn.one_hot(draw, p1.shape[-1]), p2)
    return xt, masked, jax.lax.stop_gradient(tgt)

  tx = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, lr, min(20, steps // 4),
                                                      max(steps, 2), lr * 0.1),
                   b1=0.9, b2=0.99, weight_decay=0.0)

  @jax.jit
  def step_fn(params, opt, x, key):
    xt, masked, tgt = target(x, key)

    def loss_fn(p):
      logq = jax.nn.log_softmax(teacher_fm.bind(p).mdlm_logits(xt), -1)
      kl = (tgt * (jnp.log(jnp.maximum(tgt, 1e-20)) - logq)).sum(-1)
      return jnp.sum(jnp.where(masked, kl, 0.0)) / jnp.maximum(masked.sum(), 1)
    loss, g = jax.value_and_grad(loss_fn)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt, loss

  if os.path.exists(path):
    with open(path, "rb") as f:
      return pickle.load(f)["params"]
  params, opt = student_init, tx.init(student_init)
  for s in range(steps):
    x = batch_at(train_ids, s, batch, seq_len, seed + 7)
    params, opt, loss = step_fn(params, opt, jnp.asarray(x), jax.random.key(seed * 7919 + s))
    if (s + 1) % 50 == 0:
      log(f"  sdtt dt={dt:.4f} step {s + 1}/{steps} KL {float(loss):.4f}")
  _save(path, dict(params=params))
  return params


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", required=True)
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--seq_len", type=int, default=32)
  p.add_argument("--lr", type=float, default=4e-3)
  p.add_argument("--convert_steps", type=int, default=100)
  p.add_argument("--sdtt_rounds", type=int, default=2)
  p.add_argument("--sdtt_steps", type=int, default=80)
  args = p.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  res_path = os.path.join(args.workdir, "results.json")
  results = json.load(open(res_path)) if os.path.exists(res_path) else {}
  logf = open(os.path.join(args.workdir, "log.txt"), "a")

  def log(msg):
    print(msg, flush=True)
    logf.write(msg + "\n")
    logf.flush()

  def save():
    with open(res_path + ".tmp", "w") as f:
      json.dump(results, f, indent=1)
    os.replace(res_path + ".tmp", res_path)

  L, B = args.seq_len, args.batch
  results["budget"] = dict(steps=args.steps, batch=B, seq_len=L, lr=args.lr,
                           tokens_seen=args.steps * B * L, backbone=str(backbone()),
                           hardware=f"{os.cpu_count()} CPU cores (shared), jax "
                                    f"{jax.__version__} {jax.default_backend()}")
  log(f"budget: {results['budget']}")
  train_ids, val_ids = data()
  kw = dict(steps=args.steps, batch=B, lr=args.lr, train_ids=train_ids, seq_len=L, log=log)
  ckpt = lambda name: os.path.join(args.workdir, f"{name}.pkl")

  specs = {
      "ar": dict(objective="ar"),
      "mdlm": dict(objective="mdlm"),
      "bd3lm_b4": dict(objective="bd3lm", block_size=4, noise=(0.3, 0.8)),
      "bd3lm_b16": dict(objective="bd3lm", block_size=16, noise=(0.3, 0.8)),
  }
  samplers = {
      "ar": [("text_ar", {})],
      "mdlm": [("mdlm", dict(steps=L)), ("mdlm", dict(steps=L // 4)),
               ("mdlm", dict(steps=L // 4, lrd=True)),
               ("sdar", dict(block_size=L, strategy="dynamic", threshold=0.9, steps=L // 4))],
      "bd3lm_b4": [("sdar", dict(strategy="static", steps=4)),
                   ("sdar", dict(strategy="dynamic", threshold=0.9, steps=4)),
                   ("sdar", dict(strategy="dynamic", threshold=0.7, steps=2))],
      "bd3lm_b16": [("sdar", dict(strategy="dynamic", threshold=0.9, steps=16)),
                    ("sdar", dict(strategy="dynamic", threshold=0.9, steps=4)),
                    ("fast_dllm", dict(threshold=0.9, sub_block=4))],
  }
  fms, params = {}, {}
  for name, spec in specs.items():
    spec = dict(spec)
    fms[name] = build(spec.pop("objective"), L, **spec)
    if name in results and "bpc" in results[name]:
      with open(ckpt(name), "rb") as f:
        params[name] = pickle.load(f)["params"]
      continue
    log(f"== {name}")
    params[name], curve, secs = train(fms[name], ckpt(name), **kw)
    bpc, se = eval_bpc(fms[name], params[name], val_ids, L)
    results[name] = dict(bpc=bpc, bpc_se=se, bound=name != "ar", train_s=secs, curve=curve)
    log(f"  validation bits/char {bpc:.3f} ± {se:.3f}")
    save()

  # SDAR's conversion: the AR parameters restore into the block model and training continues.
  name = "sdar_from_ar_b4"
  fms[name] = build("bd3lm", L, block_size=4, noise=(0.3, 0.8))
  if not (name in results and "bpc" in results[name]):
    log(f"== {name} (AR checkpoint -> bd3lm b=4, {args.convert_steps} more steps)")
    params[name], curve, secs = train(fms[name], ckpt(name), **dict(
        kw, steps=args.convert_steps), init=params["ar"])
    bpc, se = eval_bpc(fms[name], params[name], val_ids, L)
    before, _ = eval_bpc(fms[name], params["ar"], val_ids, L)
    results[name] = dict(bpc=bpc, bpc_se=se, bound=True, train_s=secs, curve=curve,
                         bpc_at_conversion=before)
    log(f"  validation bits/char {bpc:.3f} ± {se:.3f} (at conversion {before:.3f})")
    save()
  else:
    with open(ckpt(name), "rb") as f:
      params[name] = pickle.load(f)["params"]
  samplers[name] = [("sdar", dict(strategy="dynamic", threshold=0.9, steps=4))]

  # Sampling: tokens per forward pass, samples/s, generative bits/char under the AR model.
  sample_txt = open(os.path.join(args.workdir, "samples.txt"), "w")
  for name, lst in samplers.items():
    rows = results[name].setdefault("sampling", {})
    for sname, opts in lst:
      tag = sname + "".join(f" {k}={v}" for k, v in opts.items())
      if tag in rows:
        continue
      st, tok = sample_stats(fms[name], params[name], sname, DecodeOptions(**opts))
      st["gen_bpc_under_ar"] = gen_bpc(fms["ar"], params["ar"], tok)
      st["samples"] = text_of(tok[:2])
      rows[tag] = st
      log(f"  {name} {tag}: {st['tokens_per_forward']:.2f} tokens/pass, "
          f"{st['samples_per_s']:.1f} samples/s, gen bits/char {st['gen_bpc_under_ar']:.3f}")
      save()
  for name in samplers:
    for tag, st in results[name]["sampling"].items():
      sample_txt.write(f"### {name} / {tag}\n" + "\n---\n".join(st["samples"]) + "\n\n")
  sample_txt.close()

  # SDTT: rounds of distillation of the MDLM; each halves the sampling steps.
  sd = results.setdefault("sdtt", {})
  teacher, k_steps = params["mdlm"], L
  for r in range(args.sdtt_rounds + 1):
    key = f"K={k_steps}"
    if r > 0:
      dt = 1.0 / (2 * k_steps)   # the teacher ran 2 k_steps steps; the student takes k_steps.
      teacher = sdtt_round(fms["mdlm"], teacher, teacher, dt=dt, steps=args.sdtt_steps,
                           batch=B, lr=3e-4, train_ids=train_ids, seq_len=L,
                           path=ckpt(f"sdtt_round{r}"), log=log)
    if key not in sd:
      row = {}
      for k in sorted({k_steps, max(k_steps // 2, 1), max(k_steps // 4, 1)}, reverse=True):
        st, tok = sample_stats(fms["mdlm"], teacher, "mdlm", DecodeOptions(steps=k))
        row[f"steps={k}"] = dict(gen_bpc_under_ar=gen_bpc(fms["ar"], params["ar"], tok),
                                 samples_per_s=st["samples_per_s"])
      bpc, se = eval_bpc(fms["mdlm"], teacher, val_ids, L)
      sd[key] = dict(round=r, bpc=bpc, bpc_se=se, sampling=row)
      log(f"  sdtt round {r} (student for {k_steps} steps): NELBO {bpc:.3f} bits/char; "
          + ", ".join(f"{k}: gen {v['gen_bpc_under_ar']:.3f}" for k, v in row.items()))
      save()
    k_steps //= 2
  log("done")


if __name__ == "__main__":
  main()

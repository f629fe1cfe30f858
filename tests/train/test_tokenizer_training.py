"""A tokenizer autoencoder through the one trainer: kind-chosen evaluation (reconstruction
metrics, grid PNG), checkpoint restore giving the same reconstructions, the token cache round
trip and a cached-token generator config naming the tokenizer checkpoint."""
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from arjax import data as data_lib
from arjax.models import build_model
from arjax.loading import generator_tokenizer, load_tokenizer
from arjax.train.token_cache import write_token_cache

from arjax.recipes.tokenizers import tokenizer_config
from arjax.train.checkpoint import Checkpointer
from arjax.train.evaluation import codebook_statistics, tokenizer_metrics
from arjax.train.loop import Experiment, train_and_evaluate


def tiny_tokenizer_config():
  c = tokenizer_config("vq", smoke=True)
  c.model.ch, c.model.ch_mult, c.model.num_groups, c.model.z_channels = 8, [1, 2], 4, 8
  c.model.quantizer.codebook_size = 16
  c.train.num_steps = 2
  c.train.async_checkpointing = False
  c.eval.num_examples = 40
  c.eval.batch_size = 16
  return c


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("tok") / "run")
  config = tiny_tokenizer_config()
  return workdir, config, train_and_evaluate(config, workdir)


def test_tokenizer_trains_evaluates_and_restores(trained):
  workdir, config, final = trained
  saved = json.load(open(os.path.join(workdir, "final_metrics.json")))
  assert saved == final and final["step"] == 2 and final["test_examples"] == 40
  assert "test_bits_per_dim" not in final          # the tokenizer kind, not the generator one
  assert 0 < final["test_psnr"] < 60 and -1 <= final["test_ssim"] <= 1
  assert 0 < final["test_codebook_usage"] <= 1 and 1 <= final["test_perplexity"] <= 16
  grid = np.asarray(Image.open(final["reconstruction_grid"]))
  assert grid.shape[:2] == (2 * (4 * 30 + 2), 2 * (8 * 30 + 2))  # 4 rows x 8 of 28+2 px, x2

  exp = Experiment(config)
  abstract, shardings = exp.abstract_state()
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  ckpt = Checkpointer(workdir, async_save=False)
  state, _, _ = ckpt.restore(ckpt.latest_step(), target)
  ckpt.close()
  values, r = tokenizer_metrics(exp, state.params, "test", 40)
  assert values["psnr"] == final["test_psnr"]
  assert values["codebook_usage"] == final["test_codebook_usage"]
  assert r["tokens"].shape == (40, 14 * 14) and r["reconstructions"].dtype == np.uint8


def test_codebook_statistics_closed_form():
  tokens = np.array([[0, 0, 1, 3]])
  out = codebook_statistics(tokens, 8)
  p = np.array([0.5, 0.25, 0.25])
  assert out["codebook_usage"] == 3 / 8
  np.testing.assert_allclose(out["perplexity"], np.exp(-(p * np.log(p)).sum()))


def test_token_cache_round_trip_and_cached_generator(trained, tmp_path):
  from tests.helpers import tiny_config
  workdir, _, _ = trained
  out = str(tmp_path / "cache" / "{split}.array_record")
  summary = write_token_cache(workdir, "mnist", out, ["test"], batch_size=16, num_examples=20)
  assert summary["files"]["test"]["num_examples"] == 20
  assert summary["tokenizer"]["vocab_size"] == 16 and summary["tokenizer"]["grid"] == [14, 14]
  cfg = data_lib.default_config()
  cfg.source = f"array_record:{out}"
  it = data_lib.make_iterator(cfg, split="test", global_batch_size=20, seed=0, shuffle=False,
                              num_epochs=1)
  read = next(it)
  images = next(data_lib.make_iterator(data_lib.default_config(), split="test",
                                       global_batch_size=20, seed=0, shuffle=False,
                                       num_epochs=1))
  tok = load_tokenizer(workdir)
  direct = tok.encode(images["image"])
  assert read["tokens"].dtype == np.int32 and read["tokens"].shape == (20, 196)
  np.testing.assert_array_equal(read["tokens"], direct)
  np.testing.assert_array_equal(read["label"], images["label"])

  # A generator on the cache names the checkpoint. The model never restores it: the loader
  # (arjax.load, the trainer's Experiment) hands it the frozen run as its tokenizer's decoder.
  gen = tiny_config(tokenizer__name="cached", tokenizer__vocab_size=16, tokenizer__grid=14,
                    tokenizer__checkpoint=workdir)
  with pytest.raises(ValueError, match="cannot decode tokens to pixels"):
    build_model(gen).tokenizer.decode(direct[:3])
  model = build_model(gen, tokenizer=generator_tokenizer(gen))
  np.testing.assert_array_equal(np.asarray(model.tokenizer.decode(direct[:3])),
                                np.asarray(tok.decode(direct[:3])))
  assert np.asarray(tok.decode(direct[:3])).shape == (3, 28, 28, 1)
  with pytest.raises(ValueError, match=r"tokenizer.vocab_size=32, tokenizer.grid=14, tokenizer.latent_dim=0 "
                                       r"disagree .*vocab_size=16, grid=14x14"):
    generator_tokenizer(tiny_config(tokenizer__name="cached", tokenizer__vocab_size=32,
                                    tokenizer__grid=14, tokenizer__checkpoint=workdir))
  with pytest.raises(ValueError, match=r"tokenizer handed in has vocab_size=16 but the config's "
                                       r"tokenizer 'cached' has vocab_size=32"):
    build_model(tiny_config(tokenizer__name="cached", tokenizer__vocab_size=32,
                            tokenizer__grid=14), tokenizer=generator_tokenizer(gen))
  missing = str(tmp_path / "no_run")
  with pytest.raises(FileNotFoundError, match=f"tokenizer.checkpoint='{missing}'"):
    generator_tokenizer(tiny_config(tokenizer__name="cached", tokenizer__vocab_size=16,
                                    tokenizer__grid=14, tokenizer__checkpoint=missing))


def test_detail_and_recognition_measures_and_evaluate_cli(trained, tmp_path, capsys):
  """The trainer's evaluation reports the VTBench-style measures; they equal the metric
  functions applied to the reconstructions, and `arjax.evaluate` recomputes them from the
  checkpoint (its default for a tokenizer workdir)."""
  from arjax.evaluate import tokenizer_metrics as tm
  from arjax.evaluate.__main__ import main as evaluate_main
  from arjax.evaluate.offline import OfflineEvaluator
  from arjax.train.restore import load_run
  workdir, config, final = trained
  exp, state, _ = load_run(workdir)
  values, r = tokenizer_metrics(exp, exp.eval_params(state), "test", 40)
  # arjax.load reads the same variables (parameters and the codebook's model state) without
  # the optimizer state.
  import arjax
  _, variables, _ = arjax.load(workdir)
  assert jax.tree.structure(variables) == jax.tree.structure(exp.eval_params(state))
  jax.tree.map(np.testing.assert_array_equal, variables, exp.eval_params(state))
  labels = np.asarray(next(data_lib.make_iterator(config.data, split="test",
                                                  global_batch_size=40, seed=0, shuffle=False,
                                                  num_epochs=1))["label"])
  np.testing.assert_array_equal(r["labels"], labels)
  pred = OfflineEvaluator("mnist").predict(r["reconstructions"])
  assert values["recognition_error"] == np.mean(pred != labels)
  np.testing.assert_allclose(values["edge_f1"], tm.edge_f1(r["images"], r["reconstructions"]).mean())
  keep = tm.detail_subset(r["images"])
  assert len(keep) == 10
  np.testing.assert_allclose(values["detail_ssim"],
                             tm.ssim(r["images"][keep], r["reconstructions"][keep]).mean())
  for key in ("edge_f1", "hf_psnr", "hf_energy_ratio", "detail_psnr", "recognition_error"):
    assert final[f"test_{key}"] == values[key]

  out = tmp_path / "eval.json"
  assert evaluate_main(["--workdir", workdir, "--out", str(out)]) == 0
  got = json.load(open(out))
  assert got["num_examples"] == 40 and got["psnr"] == final["test_psnr"]
  assert got["recognition_error"] == final["test_recognition_error"]
  with pytest.raises(SystemExit):
    evaluate_main(["--workdir", workdir, "--metrics", "bpd"])
  assert "holds a tokenizer" in capsys.readouterr().err


def test_generator_on_the_cache_trains_samples_and_loads(trained, tmp_path):
  """A raster generator on the token cache, end to end: the trainer hands it the frozen
  tokenizer run (tokenizer.checkpoint), its sample grid decodes to 28x28 pixels through it,
  and `arjax.load` + `python -m arjax.sample` decode the same way without the trainer."""
  import arjax
  from arjax.sample import main as sample_main
  from tests.helpers import tiny_config
  tok_workdir, _, _ = trained
  out = str(tmp_path / "cache" / "{split}.array_record")
  write_token_cache(tok_workdir, "mnist", out, ["train", "test"], batch_size=16,
                    num_examples=16)
  gen = tiny_config(tokenizer__name="cached", tokenizer__vocab_size=16, tokenizer__grid=14,
                    tokenizer__checkpoint=tok_workdir, train__num_steps=2)
  gen.data.source, gen.data.pp = f"array_record:{out}", ""
  workdir = str(tmp_path / "gen")
  final = train_and_evaluate(gen, workdir)
  grid = np.asarray(Image.open(final["sample_grid"]))
  assert grid.shape[:2] == (2 * (10 * 30 + 2), 2 * (30 + 2))  # 10 classes x 1 of 28+2 px, x2
  fm, variables, config = arjax.load(workdir)
  assert config.tokenizer.checkpoint == tok_workdir
  tokens = np.arange(2 * 196, dtype=np.int32).reshape(2, 196) % 16
  np.testing.assert_array_equal(np.asarray(fm.bind(variables).tokenizer.decode(tokens)),
                                np.asarray(load_tokenizer(tok_workdir).decode(tokens)))
  prefix = str(tmp_path / "s")
  assert sample_main(["--workdir", workdir, "--num", "2", "--out", prefix]) == 0
  saved = np.load(prefix + ".npz")
  assert saved["images"].shape == (2, 28, 28, 1) and saved["images"].dtype == np.uint8
  np.testing.assert_array_equal(saved["images"],
                                np.asarray(load_tokenizer(tok_workdir).decode(saved["tokens"])))

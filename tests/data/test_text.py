"""Text sources (arjax.data.text): the vendored corpus, txt:PATH with bad input, generated tasks,
and the character tokenizer."""
import gzip
import hashlib
import os

import numpy as np
import pytest

from arjax import data
from arjax.data import pipeline, sources, text
from arjax.tokenizers import char

CORPUS = os.path.join(os.path.dirname(data.__file__), "bundled", "tinyshakespeare",
                      "input.txt.gz")


def _cfg(source, seq_len):
  c = pipeline.default_config()
  c.source, c.seq_len = source, seq_len
  return c


def _all(source, split, seq_len, batch=64):
  it = data.make_iterator(_cfg(source, seq_len), split, global_batch_size=batch, seed=0,
                          shuffle=False, num_epochs=1, drop_remainder=False, process_index=0,
                          process_count=1)
  return list(it)


def test_vendored_corpus_matches_its_published_checksums():
  with open(CORPUS, "rb") as f:
    packed = f.read()
  assert hashlib.sha256(packed).hexdigest() == (
      "bed00f18e91cda6838950656f0a95e07e0f4dbe8649a4b959f7602a7e53fbc6e")
  raw = gzip.decompress(packed)
  assert hashlib.sha256(raw).hexdigest() == (
      "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed")
  assert len(raw) == 1_115_394 and "".join(sorted(set(raw.decode()))) == char.CHARS
  assert len(char.CHARS) == 65


def test_split_is_the_conventional_90_10_and_windows_read_the_text():
  raw = gzip.decompress(open(CORPUS, "rb").read()).decode()
  train = sources.open_source("tinyshakespeare", "train", seq_len=32)
  test = sources.open_source("tinyshakespeare", "validation", seq_len=32)
  assert len(train) == 1_003_854 - 32 + 1
  ids = np.array([0, 17, len(train) - 1])
  b = train.read(ids)
  for row, start in zip(b["tokens"], ids):
    assert "".join(char.CHARS[t] for t in row) == raw[start:start + 32]
  assert b["token_mask"].all()
  assert test.ids.shape == (111_540,)
  assert "".join(char.CHARS[t] for t in test.ids[:50]) == raw[1_003_854:1_003_904]


@pytest.mark.parametrize("seq_len", [100, 256, 260])
def test_test_split_scores_every_character_exactly_once(seq_len):
  """The windows of the test split, weighted by token_mask, cover the split exactly once."""
  src = sources.open_source("tinyshakespeare", "test", seq_len=seq_len)
  count = np.zeros(len(src.ids))
  b = src.read(np.arange(len(src)))
  for start, row, m in zip(src.starts, b["tokens"], b["token_mask"]):
    np.testing.assert_array_equal(row, src.ids[start:start + seq_len])
    count[start:start + seq_len] += m
  np.testing.assert_array_equal(count, 1.0)
  batches = _all("tinyshakespeare", "test", seq_len)
  total = sum(float((bb["token_mask"] * bb["mask"][:, None]).sum()) for bb in batches)
  assert total == 111_540


def test_txt_source_reads_a_users_file_and_splits_it(tmp_path):
  path = tmp_path / "a.txt"
  body = "To be, or not to be: that is the question.\n" * 30
  path.write_text(body)
  train = sources.open_source(f"txt:{path}", "train", seq_len=16)
  test = sources.open_source(f"txt:{path}", "test", seq_len=16)
  cut = int(len(body) * 0.9)
  assert len(train.ids) == cut and len(test.ids) == len(body) - cut
  assert "".join(char.CHARS[t] for t in train.read(np.array([3]))["tokens"][0]) == body[3:19]


@pytest.mark.parametrize("content, expected", [
    (b"", r"a\.txt: the file is empty"),
    (b"Hello\nwor\xffld", r"a\.txt: not UTF-8: byte offset 9 \(0xff\)"),
    ("Hello\nwörld".encode(), r"a\.txt: character 'ö' at byte offset 7 is outside"),
    (b"Hello 42", r"a\.txt: character '4' at byte offset 6 is outside"),
])
def test_bad_text_files_name_the_file_and_first_offending_byte(tmp_path, content, expected):
  path = tmp_path / "a.txt"
  path.write_bytes(content)
  with pytest.raises(ValueError, match=expected) as e:
    sources.open_source(f"txt:{path}", "train", seq_len=4)
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("content, line", [
    (b"", "error: {path}: the file is empty; expected UTF-8 text"),
    (b"Hello\nwor\xffld", "error: {path}: not UTF-8: byte offset 9 (0xff) invalid start byte"),
    (b"Hello 42", "error: {path}: character '4' at byte offset 6 is outside the 65-character "
                  "vocabulary " + repr(char.CHARS)),
    (None, "error: model.block_size=3 does not divide model.seq_len=16")])
def test_trainer_cli_prints_the_one_line(tmp_path, capsys, content, line):
  """The same mistakes through `python -m arjax.train` (arjax.cli.run, in this process): exit 2
  and exactly this one line on stderr, and no workdir left behind."""
  from arjax import cli
  from arjax.train.__main__ import main
  path = tmp_path / "a.txt"
  if content is None:   # the block size of a block-diffusion model (configs/text/bd3lm.py)
    argv = ["--config", "configs/text/bd3lm.py:block=4,smoke", "--config.model.block_size=3"]
  else:
    path.write_bytes(content)
    argv = ["--config", "configs/text/char_ar.py:smoke", f"--config.data.source=txt:{path}"]
  code = cli.run(main, argv + ["--workdir", str(tmp_path / "w")])
  lines = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert code == 2 and lines == [line.format(path=path)]
  assert not (tmp_path / "w").exists()


def test_missing_file_short_split_and_bad_options_name_the_field(tmp_path):
  with pytest.raises(FileNotFoundError, match="not found"):
    sources.open_source(f"txt:{tmp_path}/none.txt", "train", seq_len=4)
  (tmp_path / "s.txt").write_text("abcdefghij" * 3)
  with pytest.raises(ValueError, match="fewer than data.seq_len=8"):
    sources.open_source(f"txt:{tmp_path}/s.txt", "test", seq_len=8)
  with pytest.raises(ValueError, match="unknown option 'pair'"):
    sources.open_source("recall:pair=3", "train", seq_len=32)
  with pytest.raises(ValueError, match="data.seq_len=8 is too short"):
    sources.open_source("recall:pairs=4", "train", seq_len=8)
  with pytest.raises(ValueError, match="pairs=9; expected 1..keys/2 = 8"):
    sources.open_source("recall:pairs=9,keys=16", "train", seq_len=32)
  with pytest.raises(ValueError, match="data.seq_len=0"):
    data.dataset_info(_cfg("tinyshakespeare", 0))
  with pytest.raises(KeyError, match="tinyshakespeare"):
    sources.parse_spec("tinyshakespear")


def test_train_chars_windows_only_the_first_u_characters_and_keeps_the_test_split():
  """data.train_chars = U: the 'train' windows are exactly those inside the first U characters
  of the training split (U - L + 1 of them); the test split is the same as without it."""
  u, seq_len = 100, 16
  c = _cfg("tinyshakespeare", seq_len)
  c.train_chars = u
  batches = list(data.make_iterator(c, "train", global_batch_size=32, seed=0, shuffle=False,
                                    num_epochs=1, drop_remainder=False, process_index=0,
                                    process_count=1))
  rows = np.concatenate([b["tokens"][b["mask"] > 0] for b in batches])
  first = text.split_ids(text.corpus_ids("tinyshakespeare"), "train", "tinyshakespeare")[:u]
  naive = np.stack([first[i:i + seq_len] for i in range(u - seq_len + 1)])
  np.testing.assert_array_equal(rows, naive)
  limited = list(data.make_iterator(c, "test", global_batch_size=4096, seed=0, shuffle=False,
                                    num_epochs=1, drop_remainder=False, process_index=0,
                                    process_count=1))
  full = _all("tinyshakespeare", "test", seq_len, batch=4096)
  for a, b in zip(limited, full):
    np.testing.assert_array_equal(a["tokens"], b["tokens"])
  assert len(limited) == len(full)
  for bad, match in [(8, "data.train_chars=8; expected 0 \\(all\\) or data.seq_len=16"),
                     (-1, "data.train_chars=-1; expected an int >= 0")]:
    c.train_chars = bad
    with pytest.raises(ValueError, match=match):
      data.dataset_info(c)
  c.source, c.train_chars = "recall:pairs=4", 100
  with pytest.raises(ValueError, match="train_chars=100: applies to corpus text sources"):
    data.dataset_info(c)


def test_recall_examples_follow_the_tinylang_layout():
  src = sources.open_source("recall:pairs=6,keys=20,num=50", "train", seq_len=20)
  b = src.read(np.arange(50))
  for row, a, m in zip(b["tokens"], b["answer"], b["token_mask"]):
    n = 6
    assert row[0] == text.BOS and row[2 * n + 1] == text.EOS and row[2 * n + 4] == text.EOS
    keys, values = row[1:2 * n + 1:2], row[2:2 * n + 1:2]
    assert len(set(keys)) == n and all(3 <= k < 13 for k in keys)
    assert all(13 <= v < 23 for v in values)
    q = row[2 * n + 2]
    assert a == 2 * n + 3 and row[a] == values[list(keys).index(q)]
    assert (row[2 * n + 5:] == text.PAD).all()
    np.testing.assert_array_equal(np.flatnonzero(m), [a])
  # A pure function of (seed, split, i); the test split is another stream.
  np.testing.assert_array_equal(src.read(np.array([7]))["tokens"][0], b["tokens"][7])
  other = sources.open_source("recall:pairs=6,keys=20,num=50", "test", seq_len=20)
  assert not np.array_equal(other.read(np.arange(5))["tokens"], b["tokens"][:5])
  assert text.recall_vocab("pairs=6,keys=20") == 23



def test_treecall_answer_is_the_head_of_the_querys_parent():
  """Naive check of the PCFG task: re-derive each answer by growing the tree again with an
  explicit node list, from the same random stream."""
  g = text.Grammar(0, terminals=12, nonterminals=6)
  for rules, probs, heads in zip(g.rules, g.rule_probs, g.heads):
    assert 1 <= len(rules) <= 5 and all(1 <= len(r) <= 9 for r in rules)
    assert np.isclose(probs.sum(), 1) and np.isclose(heads.sum(), 1)

  def naive(rng, max_depth):
    nodes = []  # (symbol, parent index, children)

    def grow(nt, depth, parent):
      me = len(nodes)
      nodes.append([("N", nt), parent, []])
      if depth >= max_depth:
        t = int(rng.choice(g.terminals, p=g.heads[nt]))
        nodes[me][2].append(len(nodes))
        nodes.append([("T", t), me, []])
        return me
      rule = g.rules[nt][int(rng.choice(len(g.rules[nt]), p=g.rule_probs[nt]))]
      for sym in rule:
        if sym < g.terminals:
          nodes[me][2].append(len(nodes))
          nodes.append([("T", int(sym)), me, []])
        else:
          nodes[me][2].append(grow(int(sym) - g.terminals, depth + 1, me))
      return me

    grow(int(rng.integers(g.nonterminals)), 0, -1)

    def head(i):
      kind, v = nodes[i][0]
      return v if kind == "T" else head(nodes[i][2][-1])

    leaves = [i for i, n in enumerate(nodes) if n[0][0] == "T"]
    return [nodes[i][0][1] for i in leaves], [head(nodes[i][1]) for i in leaves]

  for seed in range(30):
    for depth in (1, 2, 4):
      got = g.sample(np.random.default_rng(seed), depth)
      want = naive(np.random.default_rng(seed), depth)
      assert got == (want[0], want[1])
  src = sources.open_source("treecall:terminals=12,nonterminals=6,num=40", "train", seq_len=48)
  b = src.read(np.arange(40))
  for row, a in zip(b["tokens"], b["answer"]):
    q = row[a - 1]
    leaves = list(row[1:a - 2])
    assert row[a - 2] == text.EOS and row[a + 1] == text.EOS and leaves.count(q) == 1


def test_char_tokenizer_round_trip_and_layout():
  import ml_collections
  cfg = ml_collections.ConfigDict({"tokenizer": {"name": "char", "length": 12}})
  from arjax.tokenizers import build_tokenizer
  tok = build_tokenizer(cfg)
  assert tok.vocab_size == 65 and tok.grid == (1, 12) and tok.tokens_per_image == 12
  ids = tok.encode_text("Romeo: O!\nay")
  assert tok.decode_text(ids[None]) == ["Romeo: O!\nay"]
  np.testing.assert_array_equal(tok.grid_positions()[:, 1], np.arange(12))
  with pytest.raises(ValueError, match="character '#' at index 3"):
    tok.encode_text("abc#")
  with pytest.raises(ValueError, match="batch must carry 'tokens'"):
    tok.encode(np.zeros((1, 4, 4, 1), np.uint8))


def test_raster_model_scores_exactly_the_token_mask():
  """raster_ar's loss on text batches is the mean NLL over token_mask * mask (numpy reference
  from the logits), and a text model is evaluated as 'text'."""
  import jax
  import jax.numpy as jnp
  from arjax.train.evaluation import evaluation_kind
  from tests.helpers import tiny_config, tiny_model
  c = tiny_config(tokenizer__name="char", model__num_classes=1, model__class_dropout=0.0)
  c.tokenizer.length = 8
  c.model.backbone.num_layers = 1
  fm, _ = tiny_model(c)
  params = fm.initial_params()
  assert evaluation_kind(fm.bind(params)) == "text"
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 65, (3, 8)).astype(np.int32)
  token_mask = (rng.random((3, 8)) < 0.5).astype(np.float32)
  mask = np.array([1.0, 1.0, 0.0], np.float32)
  batch = {"tokens": jnp.asarray(tokens), "label": jnp.zeros((3,), jnp.int32),
           "token_mask": jnp.asarray(token_mask), "mask": jnp.asarray(mask)}
  # Jitted: eager op-by-op dispatch of the model is many times slower on a busy CPU.
  metrics, logits = jax.jit(lambda p, b: (fm.bind(p).loss(b, train=False)[1],
                                          fm.bind(p).logits(b["tokens"], b["label"])))(params,
                                                                                     batch)
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                              keepdims=True)) \
      - logits.max(-1, keepdims=True)
  nll = -np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
  w = token_mask * mask[:, None]
  np.testing.assert_allclose(float(metrics["nll"]), (nll * w).sum() / w.sum(), rtol=1e-5)
  assert float(metrics["num_tokens"]) == w.sum()

"""Text sources: the bundled tiny-Shakespeare corpus, a user's text file, and generated tasks.

Every example is {"tokens": int32 [L], "token_mask": float32 [L], "label": int32 [] (0)}, with
L = data.seq_len. `token_mask` says which tokens are scored: the models multiply it into their
per-token loss weights, so bits/char counts every scored character once and nothing else.

Corpora (`tinyshakespeare`, `corpus:tinyshakespeare`, `txt:PATH`): characters of the fixed
65-symbol vocabulary (arjax.tokenizers.char.CHARS); the first 90 % of the characters are the
split 'train', the last 10 % the split 'test' (alias 'validation'), the conventional split
(floor(0.9 n) training characters: 1,003,854 of tiny Shakespeare's 1,115,394).
  train  every window of L consecutive characters (n - L + 1 examples, one per start offset);
         all L tokens scored.
  test   the whole split, tiled by windows of L from its start; the last window is the split's
         final L characters, scoring only the characters no earlier window scored. Each window
         is read from scratch (its first character is predicted without context).
data.train_chars = U > 0 keeps only the first U characters of the split 'train' (its
U - L + 1 windows; the data-constrained experiment repeats them for many epochs); 'test' is
unchanged.
A `txt:PATH` file that is empty, not UTF-8, or holds a character outside the vocabulary fails
with one line naming the file and the first offending byte offset and character.

Generated tasks (tinylang, Arora et al.: "Mechanistic evaluation of Transformers and state space
models"), produced on the fly: example i of a split is a pure function of (seed, split, i).
Ids: PAD 0, BOS 1, EOS 2, then the task's symbols. Only the answer token is scored.
  recall:OPTS    associative recall. Keys 3 .. 3+K/2-1, values the next K/2 (K = `keys`);
                 `pairs` = n distinct keys, each with a uniformly drawn value;
                 BOS k1 v1 ... kn vn EOS q a EOS, q one of the keys, a its value. Vocabulary
                 3 + K. tinylang's ar_32 is pairs=16, keys=8192.
  treecall:OPTS  associative recall over a random PCFG ("treecall"). A grammar (fixed by
                 `grammar_seed`) has T = `terminals` terminals (ids 3 .. 3+T-1) and
                 `nonterminals` nonterminals, each with 1-5 rules of 1-9 symbols drawn with
                 weight 20 per terminal and 1 per nonterminal, Dirichlet(1) rule probabilities,
                 and a Dirichlet(1) head distribution over terminals; the head of a rule is its
                 rightmost symbol. A tree is grown from a random nonterminal with a depth limit
                 drawn from 1..`max_depth`; a nonterminal at the limit emits a terminal from its
                 head distribution. Sequence: BOS yield EOS q a EOS, where q is a terminal that
                 occurs exactly once in the yield (so the question has one answer) and a is the
                 lexical head of q's parent. Trees whose yield does not fit L - 5 tokens, or has
                 no unique terminal, are redrawn from the example's own random stream.
  OPTS: comma-separated key=value (e.g. recall:pairs=8,keys=64,num=20000); `num` / `num_test`
  examples in the splits 'train' / 'test', `seed` the stream. Unknown keys fail naming them.

Legend: N examples, L = data.seq_len tokens per example, n characters of a corpus split.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

_FIELD = "data.source"
TRAIN_FRACTION = 0.9
CORPORA = {
    # name: (file under arjax/data/bundled, SHA-256 of the decompressed text)
    "tinyshakespeare": ("tinyshakespeare/input.txt.gz",
                        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"),
}
PAD, BOS, EOS = 0, 1, 2
_TEST_SPLITS = ("test", "validation")


def _chars():
  from arjax.tokenizers.char import CHARS, encode_chars  # the vocabulary lives with its tokenizer.
  return CHARS, encode_chars


# -- corpora ---------------------------------------------------------------------------------
def check_text(data: bytes, where: str) -> str:
  """bytes -> str; empty, non-UTF-8 or out-of-vocabulary input fails in one line naming
  `where` and the first offending byte offset."""
  chars, _ = _chars()
  if not data:
    raise ValueError(f"{where}: the file is empty; expected UTF-8 text")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise ValueError(f"{where}: not UTF-8: byte offset {e.start} (0x{data[e.start]:02x}) "
                     f"{e.reason}") from None
  bad = set(text) - set(chars)
  if bad:
    i = min(text.index(c) for c in bad)
    offset = len(text[:i].encode("utf-8"))
    raise ValueError(f"{where}: character {text[i]!r} at byte offset {offset} is outside the "
                     f"{len(chars)}-character vocabulary {chars!r}")
  return text


@functools.lru_cache(maxsize=4)
def corpus_ids(name: str) -> np.ndarray:
  """int32 [n] ids of a bundled corpus (its SHA-256 checked)."""
  from arjax.data.idx import BUNDLED_DIR
  if name not in CORPORA:
    raise KeyError(f"unknown text corpus {name!r} ({_FIELD}); expected one of {sorted(CORPORA)}")
  rel, sha = CORPORA[name]
  path = os.path.join(BUNDLED_DIR, rel)
  with gzip.open(path, "rb") as f:
    data = f.read()
  if hashlib.sha256(data).hexdigest() != sha:
    raise ValueError(f"{path}: SHA-256 {hashlib.sha256(data).hexdigest()} differs from the "
                     f"published {sha}; the bundled file is damaged")
  ids = _chars()[1](check_text(data, path))
  ids.setflags(write=False)
  return ids


def file_ids(path: str) -> np.ndarray:
  """int32 [n] ids of a user's UTF-8 text file."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{_FIELD}='txt:{path}': file {path!r} not found")
  with open(path, "rb") as f:
    data = f.read()
  ids = _chars()[1](check_text(data, path))
  ids.setflags(write=False)
  return ids


def split_ids(ids: np.ndarray, split: str, where: str) -> np.ndarray:
  """The first 90 % ('train') or the last 10 % ('test' / 'validation') of a corpus."""
  cut = int(len(ids) * TRAIN_FRACTION)
  if split == "train":
    return ids[:cut]
  if split in _TEST_SPLITS:
    return ids[cut:]
  from arjax.data.errors import MissingSplitError
  raise MissingSplitError(f"{_FIELD}={where!r} has splits ['train', 'test' (alias "
                          f"'validation')], not {split!r}")


class TextWindows:
  """Windows of L tokens of one corpus split (layout in the module docstring)."""

  def __init__(self, name: str, split: str, ids: np.ndarray, seq_len: int):
    if not isinstance(seq_len, int) or seq_len <= 0:
      raise ValueError(f"data.seq_len={seq_len!r}; expected an int > 0 for text source {name!r}")
    if len(ids) < seq_len:
      raise ValueError(f"{_FIELD}={name!r}: split {split!r} has {len(ids)} characters, fewer "
                       f"than data.seq_len={seq_len}")
    self.name, self.split, self.ids, self.seq_len = name, split, ids, seq_len
    self.num_classes = 1
    n = len(ids)
    if split == "train":
      self.starts = np.arange(n - seq_len + 1, dtype=np.int64)
      self.first_scored = np.zeros(len(self.starts), np.int64)
    else:
      starts = np.arange(0, n - seq_len + 1, seq_len, dtype=np.int64)
      first = np.zeros(len(starts), np.int64)
      covered = starts[-1] + seq_len
      if covered < n:   # the tail: the final L characters, scoring only the new ones.
        starts = np.append(starts, n - seq_len)
        first = np.append(first, covered - (n - seq_len))
      self.starts, self.first_scored = starts, first

  def __len__(self) -> int:
    return len(self.starts)

  def read(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
    ids = np.asarray(ids)
    cols = np.arange(self.seq_len)
    tokens = self.ids[self.starts[ids][:, None] + cols]
    mask = (cols[None, :] >= self.first_scored[ids][:, None]).astype(np.float32)
    return {"tokens": tokens.astype(np.int32), "token_mask": mask,
            "label": np.zeros(len(ids), np.int32)}

  def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.read(np.array([int(i)])).items()}

  def labels(self) -> np.ndarray:
    return np.zeros(len(self), np.int32)

  def __repr__(self) -> str:
    return f"TextWindows({self.name!r}, split={self.split!r}, seq_len={self.seq_len})"


def first_chars(source, n: int) -> TextWindows:
  """The 'train' windows of a corpus source restricted to its first n characters
  (data.train_chars = n > 0: repeated data; every window of L inside them, n - L + 1)."""
  if not isinstance(source, TextWindows):
    raise ValueError(f"data.train_chars={n}: applies to corpus text sources "
                     f"('tinyshakespeare', 'txt:PATH'), not {source!r}")
  if n < source.seq_len or n > len(source.ids):
    raise ValueError(f"data.train_chars={n}; expected 0 (all) or data.seq_len={source.seq_len} "
                     f"..{len(source.ids)} (the characters of split {source.split!r} of "
                     f"{source.name!r})")
  return TextWindows(source.name, source.split, source.ids[:n], source.seq_len)


# -- generated tasks -------------------------------------------------------------------------
def parse_options(arg: str, defaults: Dict[str, int], where: str) -> Dict[str, int]:
  """'pairs=8,keys=64' -> {'pairs': 8, 'keys': 64, ...defaults}; unknown keys fail."""
  out = dict(defaults)
  for item in (arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(f"{_FIELD}={where!r}: unknown option {key!r}; expected some of "
                       f"{sorted(defaults)}")
    try:
      out[key] = int(value) if sep else None
    except ValueError:
      out[key] = None
    if out[key] is None:
      raise ValueError(f"{_FIELD}={where!r}: option {key}={value!r}; expected an integer")
  return out


def recall_example(rng: np.random.Generator, pairs: int, keys: int) -> Tuple[List[int], int]:
  """(BOS k1 v1 ... kn vn EOS q a EOS, index of a) of associative recall."""
  half = keys // 2
  ks = rng.choice(half, size=pairs, replace=False) + 3
  vs = rng.integers(0, half, size=pairs) + 3 + half
  q = int(rng.integers(pairs))
  seq = [BOS] + [int(t) for kv in zip(ks, vs) for t in kv] + [EOS, int(ks[q]), int(vs[q]), EOS]
  return seq, len(seq) - 2


class Grammar:
  """A random PCFG of tinylang's treecall task (see the module docstring)."""

  def __init__(self, seed: int, terminals: int, nonterminals: int):
    rng = np.random.default_rng([seed, 7])
    self.terminals, self.nonterminals = terminals, nonterminals
    # Symbols: 0..T-1 terminals, T..T+NT-1 nonterminals.
    weights = np.concatenate([np.full(terminals, 20.0), np.ones(nonterminals)])
    weights /= weights.sum()
    self.rules: List[List[List[int]]] = []
    self.rule_probs: List[np.ndarray] = []
    self.heads: List[np.ndarray] = []
    for _ in range(nonterminals):
      count = int(rng.integers(1, 6))
      self.rules.append([list(rng.choice(len(weights), size=int(rng.integers(1, 10)), p=weights))
                         for _ in range(count)])
      self.rule_probs.append(rng.dirichlet(np.ones(count)))
      self.heads.append(rng.dirichlet(np.ones(terminals)))

  def sample(self, rng: np.random.Generator, max_depth: int):
    """(yield: terminal ids [m], parent head of each yield position [m]) of one tree."""
    out: List[int] = []
    parent_head: List[int] = []

    def grow(nt: int, depth: int) -> Tuple[List[int], int]:
      """Expands nonterminal nt; returns (positions of its direct terminal children in `out`,
      its lexical head)."""
      if depth >= max_depth:  # at the limit the nonterminal emits one terminal of its head law.
        t = int(rng.choice(self.terminals, p=self.heads[nt]))
        out.append(t)
        parent_head.append(t)  # its parent is nt, whose only child (and head) it is.
        return [len(out) - 1], t
      rule = self.rules[nt][int(rng.choice(len(self.rules[nt]), p=self.rule_probs[nt]))]
      direct, head = [], -1
      for sym in rule:
        if sym < self.terminals:
          out.append(int(sym))
          parent_head.append(-1)
          direct.append(len(out) - 1)
          head = int(sym)
        else:
          _, head = grow(int(sym) - self.terminals, depth + 1)
      for p in direct:
        parent_head[p] = head  # the head is the rightmost symbol's head.
      return direct, head

    root = int(rng.integers(self.nonterminals))
    grow(root, 0)
    return out, parent_head


def treecall_example(rng: np.random.Generator, grammar: Grammar, max_depth: int,
                     max_yield: int, tries: int = 1000) -> Tuple[List[int], int]:
  """(BOS yield EOS q a EOS, index of a) of treecall; redraws trees that do not fit."""
  for _ in range(tries):
    depth = int(rng.integers(1, max_depth + 1))
    leaves, heads = grammar.sample(rng, depth)
    if len(leaves) > max_yield:
      continue
    values, counts = np.unique(leaves, return_counts=True)
    unique = set(values[counts == 1].tolist())
    cand = [i for i, t in enumerate(leaves) if t in unique and heads[i] >= 0]
    if not cand:
      continue
    i = cand[int(rng.integers(len(cand)))]
    seq = [BOS] + [t + 3 for t in leaves] + [EOS, leaves[i] + 3, heads[i] + 3, EOS]
    return seq, len(seq) - 2
  raise ValueError(f"treecall: no tree of at most {max_yield} terminals with a unique terminal "
                   f"in {tries} draws; raise data.seq_len or lower max_depth")


class TaskSource:
  """Generated examples of a task, padded to L; only the answer is scored."""

  def __init__(self, name: str, split: str, seq_len: int, num: int, seed: int, make,
               vocab_size: int, min_len: int):
    if not isinstance(seq_len, int) or seq_len < min_len:
      raise ValueError(f"data.seq_len={seq_len!r} is too short for {_FIELD}={name!r}: its "
                       f"sequences need {min_len} tokens")
    if split not in ("train",) + _TEST_SPLITS:
      from arjax.data.errors import MissingSplitError
      raise MissingSplitError(f"{_FIELD}={name!r} has splits ['train', 'test'], not {split!r}")
    if num <= 0:
      raise ValueError(f"{_FIELD}={name!r}: {num} examples in split {split!r}; expected > 0")
    self.name, self.split, self.seq_len, self.num, self.seed = name, split, seq_len, num, seed
    self._make, self.vocab_size = make, vocab_size
    self.num_classes = 1
    self._stream = 0 if split == "train" else 1

  def __len__(self) -> int:
    return self.num

  def example(self, i: int) -> Tuple[np.ndarray, int]:
    """(tokens int32 [L], answer index) of example i."""
    seq, answer = self._make(np.random.default_rng([self.seed, self._stream, int(i)]))
    tokens = np.full(self.seq_len, PAD, np.int32)
    tokens[:len(seq)] = seq
    return tokens, answer

  def read(self, ids: np.ndarray) -> Dict[str, np.ndarray]:
    made = [self.example(i) for i in np.asarray(ids)]
    tokens = np.stack([t for t, _ in made])
    answer = np.array([a for _, a in made], np.int32)
    mask = (np.arange(self.seq_len)[None] == answer[:, None]).astype(np.float32)
    return {"tokens": tokens, "token_mask": mask, "answer": answer,
            "label": np.zeros(len(made), np.int32)}

  def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
    return {k: v[0] for k, v in self.read(np.array([int(i)])).items()}

  def labels(self) -> np.ndarray:
    return np.zeros(self.num, np.int32)

  def __repr__(self) -> str:
    return f"TaskSource({self.name!r}, split={self.split!r}, seq_len={self.seq_len})"


RECALL_DEFAULTS = {"pairs": 8, "keys": 64, "num": 100_000, "num_test": 1_000, "seed": 0}
TREECALL_DEFAULTS = {"terminals": 32, "nonterminals": 40, "max_depth": 10, "grammar_seed": 0,
                     "num": 100_000, "num_test": 1_000, "seed": 0}


def recall_vocab(arg: str) -> int:
  """Vocabulary size 3 + K of 'recall:OPTS'."""
  return 3 + parse_options(arg, RECALL_DEFAULTS, f"recall:{arg}")["keys"]


def treecall_vocab(arg: str) -> int:
  """Vocabulary size 3 + T of 'treecall:OPTS'."""
  return 3 + parse_options(arg, TREECALL_DEFAULTS, f"treecall:{arg}")["terminals"]


def recall_source(arg: str, split: str, seq_len: int) -> TaskSource:
  where = f"recall:{arg}"
  o = parse_options(arg, RECALL_DEFAULTS, where)
  if o["keys"] < 2 or o["keys"] % 2:
    raise ValueError(f"{_FIELD}={where!r}: keys={o['keys']}; expected an even number >= 2")
  if not 1 <= o["pairs"] <= o["keys"] // 2:
    raise ValueError(f"{_FIELD}={where!r}: pairs={o['pairs']}; expected 1..keys/2 = "
                     f"{o['keys'] // 2} (keys are drawn without replacement)")
  make = functools.partial(_recall_make, pairs=o["pairs"], keys=o["keys"])
  num = o["num"] if split == "train" else o["num_test"]
  return TaskSource(where, split, seq_len, num, o["seed"], make, 3 + o["keys"],
                    2 * o["pairs"] + 5)


def _recall_make(rng, *, pairs, keys):
  return recall_example(rng, pairs, keys)


@functools.lru_cache(maxsize=8)
def _grammar(seed: int, terminals: int, nonterminals: int) -> Grammar:
  return Grammar(seed, terminals, nonterminals)


def treecall_source(arg: str, split: str, seq_len: int) -> TaskSource:
  where = f"treecall:{arg}"
  o = parse_options(arg, TREECALL_DEFAULTS, where)
  for key in ("terminals", "nonterminals", "max_depth"):
    if o[key] < 1:
      raise ValueError(f"{_FIELD}={where!r}: {key}={o[key]}; expected >= 1")
  grammar = _grammar(o["grammar_seed"], o["terminals"], o["nonterminals"])
  make = functools.partial(_treecall_make, grammar=grammar, max_depth=o["max_depth"],
                           max_yield=seq_len - 5)
  num = o["num"] if split == "train" else o["num_test"]
  return TaskSource(where, split, seq_len, num, o["seed"], make, 3 + o["terminals"], 6)


def _treecall_make(rng, *, grammar, max_depth, max_yield):
  return treecall_example(rng, grammar, max_depth, max_yield)

"""Class-conditional raster AR on a token cache of a trained MNIST tokenizer (7x7 = 49 tokens).

  python -m arjax.train --config configs/tokenizers/vq.py --workdir workdirs/tok_vq
  python -m arjax.tokenize --tokenizer_workdir workdirs/tok_vq --data mnist \
      --out 'workdirs/mnist_vq/{split}.array_record'
  python -m arjax.train --config configs/tokenizers/raster_on_tokens.py --workdir workdirs/ar_vq

Arguments: tokenizer=WORKDIR (decodes the samples), cache=PATH with '{split}', vocab_size and
grid of that tokenizer (checked against its checkpoint at start). The sample grid (decoded to
28x28 pixels through the tokenizer) is written to WORKDIR/images/samples_*.png; bits/dim is per
token (log2 of the vocabulary for a uniform model). Results: docs/tokenizers.md.

`:smoke` runs on a fresh clone, without the two runs above: the tokenizer run and its token
cache are replaced by a stand-in with the same 7x7 token grid, the pixel tokenizer (8 grey
levels of the 28x28 images area-averaged to 7x7, tokens computed from the batch's images), so
it checks the generator, the trainer and the sampler at this config's shapes, not the reading of
a cache (tests/train/test_tokenizer_training.py builds a tokenizer run and a cache and trains a
generator on it).
"""
from arjax.config import ConfigDict, base_config, parse_arg


def get_config(arg=None):
  args = parse_arg(arg, tokenizer="workdirs/tok_vq", cache="workdirs/mnist_vq/{split}.array_record",
                   vocab_size=512, grid=7)
  c = base_config()
  c.data.source = f"array_record:{args.cache}"
  c.data.pp = ""
  c.tokenizer.name = "cached"
  c.tokenizer.vocab_size = args.vocab_size
  c.tokenizer.grid = args.grid
  c.tokenizer.checkpoint = args.tokenizer
  if args.smoke:  # the stand-in for the tokenizer run and its cache (see the docstring).
    c.data.source = "mnist"
    c.tokenizer = ConfigDict(dict(name="pixel", levels=8, resolution=args.grid,
                                  channels=1))
  b = c.model.backbone
  b.dim, b.num_heads, b.num_layers, b.multiple_of = 96, 4, 4, 32
  c.train.batch_size = 32
  c.train.num_steps = 300
  c.train.lr = 3e-3
  c.train.warmup_steps = 30
  c.train.log_every = 50
  c.train.eval_every = 100_000  # evaluate once, at the end.
  c.train.checkpoint_every = 300
  c.eval.num_examples = 1000
  c.eval.cfg_scale = 2.0
  if args.smoke:
    c.train.batch_size, c.train.num_steps, c.train.log_every = 8, 4, 2
    c.eval.num_examples, c.eval.batch_size, c.eval.samples_per_class = 64, 32, 1
    b.num_layers, b.dim, b.num_heads = 1, 32, 2
  return c

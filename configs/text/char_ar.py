"""Character-level AR baseline on tiny Shakespeare (the text row of the README).

  python -m arjax.train --config configs/text/char_ar.py --workdir workdirs/char_ar
  python -m arjax.sample --workdir workdirs/char_ar --num 4

A causal Llama-style transformer (raster order over a 1 x L grid of characters, 2D RoPE with
row 0) predicts each character of a 64-character window from the ones before it; the class
token (one class) is the beginning-of-sequence token. Evaluation: bits/char on the whole
validation split (the last 10 % of the characters, tiled by 64-character windows, every
character scored once) and text samples from the KV-cached sequential sampler
(WORKDIR/samples/text_STEP.txt). The run recorded in docs/text.md (the budget below) reaches
the figure stated there; the issue's bar is <= 2.5 bits/char. `:smoke` runs the same code for
a few steps.
"""
from arjax.config import base_config, parse_arg

SEQ_LEN = 64


def get_config(arg=None):
  args = parse_arg(arg)
  c = base_config()
  c.data.source = "tinyshakespeare"
  c.data.seq_len = SEQ_LEN
  c.tokenizer.name = "char"
  c.tokenizer.length = SEQ_LEN
  c.model.num_classes = 1         # unconditional: the class token is a BOS token.
  c.model.class_dropout = 0.0
  c.model.backbone.dim = 128
  c.model.backbone.num_heads = 4
  c.model.backbone.num_layers = 4
  c.model.backbone.multiple_of = 32
  c.train.batch_size = 32
  c.train.num_steps = 1500
  c.train.lr = 3e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.05
  c.train.log_every = 100
  c.train.eval_every = 100_000    # evaluate once, at the end.
  c.train.checkpoint_every = 500
  c.eval.batch_size = 128
  c.eval.num_examples = -1        # the whole validation split.
  c.eval.samples_per_class = 4    # text samples written at each evaluation.
  if args.smoke:
    c.data.seq_len = c.tokenizer.length = 16
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.eval.num_examples = 64
    c.eval.batch_size = 32
    c.eval.samples_per_class = 2
    c.model.backbone.num_layers = 1
    c.model.backbone.dim = 32
    c.model.backbone.num_heads = 2
  return c

"""Associative recall and its PCFG variant (tinylang's tasks) with the causal transformer.

  python -m arjax.train --config configs/text/recall.py:task=recall --workdir workdirs/recall
  python experiments/recall.py        # both tasks -> the Recall section of docs/text.md

Data: generated on the fly from a seed (arjax.data.text): 'recall' is BOS k1 v1 ... k8 v8 EOS q
a EOS with 32 keys and 32 values (vocabulary 67, 21 tokens, padded to 24); 'treecall' is a
random PCFG over 32 terminals, BOS yield EOS q a EOS with a the head of q's parent (padded to
32). Only the answer token is scored (batch['token_mask']), as in tinylang. The model is a
2-layer width-64 Llama-style transformer (raster order, tokenizer 'sequence'); tinylang's ar_32
setting is 2 layers, width 128, 16 pairs of 8192 symbols. `:smoke` runs a few steps.
"""
from arjax.config import base_config, parse_arg

TASKS = {
    # task: (data.source, vocabulary size, data.seq_len)
    "recall": ("recall:pairs=8,keys=64", 3 + 64, 24),
    "treecall": ("treecall:terminals=32,nonterminals=40,max_depth=10", 3 + 32, 32),
}


def get_config(arg=None):
  args = parse_arg(arg, task="recall", steps=3000)
  if args.task not in TASKS:
    raise ValueError(f"config argument task={args.task!r}; expected one of {sorted(TASKS)}")
  source, vocab, seq_len = TASKS[args.task]
  c = base_config()
  c.data.source = source
  c.data.seq_len = seq_len
  c.tokenizer.name = "sequence"
  c.tokenizer.vocab_size = vocab
  c.tokenizer.length = seq_len
  c.model.num_classes = 1         # unconditional: the class token is a BOS slot.
  c.model.class_dropout = 0.0
  c.model.backbone.dim = 64
  c.model.backbone.num_heads = 2
  c.model.backbone.num_layers = 2
  c.model.backbone.multiple_of = 32
  c.train.batch_size = 64
  c.train.num_steps = args.steps
  c.train.lr = 1e-3
  c.train.warmup_steps = 100
  c.train.weight_decay = 0.0
  c.train.log_every = 250
  c.train.eval_every = 100_000    # evaluate once, at the end.
  c.train.checkpoint_every = 1000
  c.eval.batch_size = 250
  c.eval.num_examples = -1        # the 1000 generated test examples.
  c.eval.samples_per_class = 2
  if args.smoke:
    c.train.batch_size = 8
    c.train.num_steps = 4
    c.train.log_every = 2
    c.train.checkpoint_every = 4
    c.eval.num_examples = 32
    c.eval.batch_size = 16
    c.model.backbone.dim = 32
    c.model.backbone.num_layers = 1
  return c

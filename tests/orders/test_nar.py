"""NAR (model 'nar'): the logits of cell (h, w) depend only on cells of earlier anti-diagonals
(h' + w' < h + w), through both heads and the extra block; perturbation through the real model."""
import jax
import jax.numpy as jnp
import numpy as np

from tests.helpers import tiny_config, tiny_model

H = W = 4


def test_a_cell_never_depends_on_its_own_or_a_later_anti_diagonal():
  fm, _ = tiny_model(tiny_config(model__name="nar", order__name="nar", tokenizer__resolution=4))
  params = fm.initial_params()
  assert "extra_block" in params and "head_below" in params
  model = fm.bind(params)
  n = H * W
  tokens = jax.random.randint(jax.random.key(0), (1, n), 0, 4)
  cells = [5, 10]                          # (1, 1) on diagonal 2 and (2, 2) on diagonal 4.
  batch = jnp.concatenate([tokens] + [tokens.at[0, c].set((tokens[0, c] + 1) % 4) for c in cells])
  layout = model.order.train_layout(jax.random.key(1), batch.shape[0], 0, False)
  logits = jax.jit(lambda t: model.grid_logits_of_layout(t, jnp.full((t.shape[0],), 3),
                                                         layout))(batch)
  logits = np.asarray(logits)
  diag = np.add.outer(np.arange(H), np.arange(W)).reshape(-1)
  for i, c in enumerate(cells):
    diff = np.abs(logits[i + 1] - logits[0]).max(-1)                # [N]
    assert diff[diag <= diag[c]].max() == 0, c   # the cell's own and earlier diagonals: unchanged.
    assert diff[diag == diag[c] + 1].min() > 0, c  # its right / lower neighbours: changed.

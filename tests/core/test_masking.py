import jax
import jax.numpy as jnp
import numpy as np
import pytest

from apd_jax.core import masking


@pytest.mark.parametrize("k,B,C", [(0.211, 2048, 5), (1.0, 64, 50),
                                   (1.28, 100, 130), (2.5, 7, 3)])
def test_batch_topk_keeps_exactly_int_kB(k, B, C):
  attr = jax.random.uniform(jax.random.PRNGKey(1), (B, C))
  mask = masking.batch_topk_mask(attr, k)
  assert int(mask.sum()) == int(k * B)
  # The kept entries are the largest ones.
  kept, dropped = attr[mask > 0], attr[mask == 0]
  assert float(kept.min()) >= float(dropped.max())


def test_batch_topk_lets_examples_differ():
  attr = jnp.array([[9.0, 8.0, 7.0], [0.1, 0.2, 0.3]])
  mask = masking.batch_topk_mask(attr, 1.5)   # 3 of 6 entries
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 0]])


def test_batch_topk_ties_still_exact():
  mask = masking.batch_topk_mask(jnp.ones((4, 3)), 1.0)
  assert int(mask.sum()) == 4


def test_per_example_topk():
  attr = jnp.array([[1.0, 5.0, 3.0], [4.0, 2.0, 0.0]])
  np.testing.assert_array_equal(masking.topk_mask(attr, 2),
                                [[0, 1, 1], [1, 1, 0]])
  np.testing.assert_array_equal(masking.topk_mask(attr, 3), jnp.ones((2, 3)))


def test_mask_has_no_gradient():
  g = jax.grad(lambda a: jnp.sum(masking.batch_topk_mask(a, 1.0) * 3.0))(
      jnp.arange(6.0).reshape(2, 3))
  np.testing.assert_array_equal(g, jnp.zeros((2, 3)))


def test_bad_k_rejected():
  with pytest.raises(ValueError, match="int\\(k\\*B\\)"):
    masking.batch_topk_mask(jnp.ones((4, 3)), 0.1)
  with pytest.raises(ValueError, match="integer k"):
    masking.topk_mask(jnp.ones((4, 3)), 0)


@pytest.mark.parametrize("batch_topk,ks", [(True, (0.211, 1.0, 2.5, 3.0)),
                                           (False, (1, 2, 3))])
def test_traced_k_selects_what_lax_top_k_selects(batch_topk, ks):
  # Integer-valued attributions: many ties, which both forms break by index.
  attr = jax.random.randint(jax.random.PRNGKey(3), (40, 3), 0, 4)
  attr = attr.astype(jnp.float32)
  traced = jax.jit(jax.vmap(
      lambda k: masking.make_mask(attr, k, batch_topk=batch_topk,
                                  k_max=max(ks))))(
          jnp.array(ks, jnp.float32))
  for k, mask in zip(ks, traced, strict=True):
    np.testing.assert_array_equal(
        mask, masking.make_mask(attr, k, batch_topk=batch_topk))


def test_traced_batch_topk_count_is_floor_kB():
  attr = jax.random.uniform(jax.random.PRNGKey(4), (2048, 5))
  mask = jax.jit(lambda k: masking.make_mask(attr, k, batch_topk=True,
                                             k_max=1.0))(jnp.float32(0.211))
  assert int(mask.sum()) == 432           # ⌊0.211·2048⌋ = ⌊432.128⌋


def test_a_mask_over_positions_counts_every_position_as_an_example():
  attr = jax.random.uniform(jax.random.PRNGKey(3), (2, 5, 4))   # B, T, C
  batch = masking.make_mask(attr, 1.5, batch_topk=True)
  assert batch.shape == (2, 5, 4) and int(batch.sum()) == 15   # 1.5 · 10
  # The kept entries are the 15 largest of all B·T·C attributions.
  assert float(attr[batch > 0].min()) > float(attr[batch == 0].max())
  per = masking.make_mask(attr, 2, batch_topk=False)
  assert (per.sum(axis=-1) == 2).all()

import jax.numpy as jnp
import pytest

from apd_jax.core import selection


def params():
  return {"enc": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)},
          "dec": [jnp.full((4, 3), 2.0)]}


def test_select_by_regex_in_keystr():
  assert selection.select_leaves(params(), r"\['w'\]") == ("['enc']['w']",)
  assert selection.select_leaves(params(), r"dec|enc.*w") == (
      "['dec'][0]", "['enc']['w']")


def test_no_match_names_the_leaves():
  with pytest.raises(ValueError, match=r"matches no leaf.*\['enc'\]\['b'\]"):
    selection.select_leaves(params(), "nothing")


def test_non_2d_leaf_rejected():
  with pytest.raises(ValueError, match=r"\['enc'\]\['b'\] of shape \(4,\)"):
    selection.select_leaves(params(), "enc")


def test_bad_regex_rejected():
  with pytest.raises(ValueError, match="not a valid regex"):
    selection.select_leaves(params(), "(")


def test_get_and_replace_round_trip():
  p = params()
  names = selection.select_leaves(p, "w|dec")
  got = selection.get_leaves(p, names)
  new = {n: v + 1 for n, v in got.items()}
  q = selection.replace_leaves(p, new)
  assert float(q["enc"]["w"][0, 0]) == 2.0
  assert float(q["dec"][0][0, 0]) == 3.0
  assert q["enc"]["b"] is p["enc"]["b"]

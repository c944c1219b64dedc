"""Failure signs on hand-built activity with known answers."""

import numpy as np
import pytest

from apd_jax.analysis import diagnostics

# Rows: feature 0, feature 1, feature 2, feature 0 again.
X = np.array([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 0., 0.]])
# c0 serves feature 0, c1 features 1 and 2 (merged), c2 feature 0 again
# (split with c0), c3 is dead.
ACTIVE = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0]],
                  bool)


def test_lift_is_the_rise_of_each_input_when_on():
  # E|x| = (1/2, 1/4, 1/4); c1 on rows 1, 2: E[|x| | on] = (0, 1/2, 1/2).
  np.testing.assert_allclose(diagnostics.lift(ACTIVE, X), [
      [0.5, 0, 0], [0, 0.25, 0.25], [0.5, 0, 0], [0, 0, 0]])


def test_merged_split_and_dead_components_are_flagged():
  d = diagnostics.from_activity(ACTIVE, X)
  assert d == dict(dead=1.0, always_on=0.0, coactivation=1.0,
                   inputs_per_component=pytest.approx(2.0),
                   shared_inputs=pytest.approx(1.0))


def test_clean_components_are_not_flagged():
  clean = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0]], bool)
  d = diagnostics.from_activity(clean, X)
  assert d == dict(dead=0.0, always_on=0.0, coactivation=0.0,
                   inputs_per_component=pytest.approx(1.0),
                   shared_inputs=pytest.approx(0.0))
  on = np.ones((4, 1), bool)
  assert diagnostics.from_activity(on, None) == dict(
      dead=0.0, always_on=1.0, coactivation=0.0)

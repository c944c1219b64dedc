"""Each figure is written as a PNG with a title that says what it shows,
its definitions under it, labelled axes, a legend or colour bar, and
integer ticks on integer axes (read back from the matplotlib objects)."""

import jax
import numpy as np
import pytest

from apd_jax.analysis import component_figures
from apd_jax.analysis import plotting
from apd_jax.analysis import summary as summary_lib

PNG = b"\x89PNG\r\n\x1a\n"


def texts(fig):
  return [t.get_text() for t in fig.texts]


def panels(fig):
  """The axes that hold data (not colour bars)."""
  return [a for a in fig.axes if a.get_label() != "<colorbar>"]


def colorbar_labels(fig):
  return [a.get_ylabel() for a in fig.axes if a.get_label() == "<colorbar>"]


def is_integer(ticks):
  return len(ticks) > 0 and np.allclose(ticks, np.round(ticks))


def written(path):
  return path.read_bytes()[:8] == PNG


def test_tms_columns_figure_names_features_and_defines_the_metrics(tmp_path):
  W = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (2, 5)))
  P = np.stack([W * (np.arange(5) == c) for c in range(5)])
  fig = plotting.plot_columns(W, P, str(tmp_path / "c.png"), title="TMS",
                              column="feature",
                              metrics=dict(MMCS=1.0, ML2R=0.9))
  assert written(tmp_path / "c.png")
  title, *notes = texts(fig)
  assert title == "TMS: MMCS 1.000, ML2R 0.900"
  assert any(n.startswith("MMCS: mean over features j") and "ML2R:" in n
             for n in notes)
  assert any("ordered by ‖P_c‖_F" in n and "one scale" in n for n in notes)
  (legend,) = fig.legends
  assert [t.get_text() for t in legend.get_texts()] == [
      f"feature {j}" for j in range(5)]
  axes = panels(fig)
  assert len(axes) == 6 and axes[0].get_title() == "target W"
  assert all(a.get_xlabel() == "W[0, j]" and a.get_ylabel() == "W[1, j]"
             for a in axes)
  # One scale for every panel.
  assert len({a.get_xlim() for a in axes}) == 1


def test_kernel_columns_figure_has_integer_ticks_and_colour_bars(tmp_path):
  W = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (10, 8)))
  P = np.stack([W * (np.arange(8) == c % 8) for c in range(12)])
  fig = plotting.plot_columns(W, P, str(tmp_path / "k.png"),
                              column="output unit")
  assert written(tmp_path / "k.png")
  assert texts(fig)[0] == ("Target columns beside each component's "
                           "(output units)")
  a, b = panels(fig)
  assert a.get_xlabel() == "output unit j (column of W)"
  assert a.get_ylabel() == "row i of W" and "feature" not in a.get_xlabel()
  assert is_integer(a.get_xticks()) and is_integer(a.get_yticks())
  assert is_integer(b.get_xticks())
  assert b.get_ylabel() == "component c (id)"
  assert colorbar_labels(fig) == ["weight W[i, j]",
                                  "‖P_c[:, j]‖ / ‖W[:, j]‖"]


def test_loss_curves_have_every_log_on_a_log_scale_with_each_term_named(
    tmp_path):
  hist = [dict(step=s, loss=1.0 / s, faithfulness=0.1 / s, minimality=0.5,
               simplicity=0.2, l0=1.0 + s / 100, steps_per_s=9.0)
          for s in range(10, 310, 10)]
  fig = plotting.plot_history(hist, str(tmp_path / "h.png"))
  assert written(tmp_path / "h.png")
  title, note = texts(fig)
  assert title == "Loss terms and L0 during training"
  assert "mean over the 10 steps" in note and "final L0 4.000" in note
  loss_ax, l0_ax = panels(fig)
  assert loss_ax.get_yscale() == "log"
  assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == [
      plotting.TERMS[k] for k in ("loss", "faithfulness", "minimality",
                                  "simplicity")]
  for line in loss_ax.get_lines():                  # every logged step
    np.testing.assert_array_equal(line.get_xdata(), range(10, 310, 10))
  assert loss_ax.get_ylabel() == "loss term (log scale)"
  assert l0_ax.get_xlabel() == "training step"
  assert "L0" in l0_ax.get_ylabel()
  # The total is the weighted sum; the terms beside it are unweighted.
  assert plotting.TERMS["loss"].startswith("total: Σ coefficient × term")
  no_l0 = [{k: v for k, v in r.items() if k != "l0"} for r in hist]
  fig = plotting.plot_history(no_l0, str(tmp_path / "h2.png"))
  assert texts(fig)[0] == "Loss terms during training"
  assert len(panels(fig)) == 1
  assert is_integer(l0_ax.get_xticks())
  assert plotting.plot_history([], str(tmp_path / "none.png")) is None


def test_causal_importance_figure(tmp_path):
  G = {"a": np.eye(3, 5), "b#1": np.zeros((3, 4))}
  fig = plotting.plot_causal_importances(G, str(tmp_path / "g.png"),
                                         xlabel="input feature (one-hot)")
  assert written(tmp_path / "g.png")
  assert texts(fig)[0] == ("Causal importance G of each subcomponent on "
                           "each input")
  a, b = panels(fig)
  assert a.get_title() == "a: 3 of 5 above 0.1"
  assert b.get_title() == "b#1: 0 of 4 above 0.1"
  assert a.get_xlabel() == "subcomponent (id)"
  assert a.get_ylabel() == "input feature (one-hot)"
  assert [t.get_text() for t in a.get_xticklabels()] == ["0", "1", "2"]
  assert colorbar_labels(fig) == ["causal importance G"]


def test_contributions_figure_states_its_one_scale(tmp_path):
  kappa = np.diag([1.0, 2.0, 4.0])
  fig = plotting.plot_contributions(kappa, 0.5 * kappa, [1.0, 0.95, 0.5],
                                    str(tmp_path / "k.png"))
  assert written(tmp_path / "k.png")
  title, definition, scale = texts(fig)
  assert title.startswith("Neuron contributions of each input feature")
  assert definition.startswith("κ[f, n] = (e_f W_in)_n")
  assert "one colour scale for both panels" in scale and "0.50×" in scale
  target, comp, cos = panels(fig)
  assert target.get_xlabel() == "MLP neuron n"
  assert target.get_ylabel() == "input feature f"
  assert is_integer(target.get_xticks()) and is_integer(comp.get_yticks())
  assert colorbar_labels(fig) == ["contribution κ (both panels ±4)"] * 2
  assert cos.get_title() == "2/3 ≥ 0.9"


def test_scrubbing_and_function_figures(tmp_path):
  rng = np.random.default_rng(0)
  losses = {k: rng.uniform(1e-4, 1e-2, 50) for k in (
      "topk", "scrubbed", "anti_scrubbed", "monosemantic")}
  fig = plotting.plot_scrubbing(losses, str(tmp_path / "s.png"))
  assert written(tmp_path / "s.png")
  assert texts(fig)[0] == ("Task loss when half the components are "
                           "switched off")
  (ax,) = panels(fig)
  assert ax.get_xscale() == "log" and ax.get_ylabel() == "examples (count)"
  assert len(ax.get_legend().get_texts()) == 4
  fig = plotting.plot_function_components(
      rng.uniform(size=(3, 6)), np.array([0, 0, 1, 1, 2, 2]),
      np.eye(3) + 0.1, str(tmp_path / "f.png"))
  assert written(tmp_path / "f.png")
  assert texts(fig)[0].startswith("Each component's weight on each neuron")
  assert panels(fig)[0].get_title() == "component 0: F0 (cos 1.10)"
  assert panels(fig)[0].get_ylabel() == "‖neuron's weights‖"
  assert fig.legends[0].get_title().get_text() == (
      "function the neuron serves")


def hand_summary():
  row = lambda c, f, status: summary_lib.Component(  # noqa: E731
      "", c, f, 1.0 if f else float("nan"), {"W": 1.0}, {"W": 1.0}, status)
  return summary_lib.Summary(
      "APD", "attribution", 100,
      (row(0, 1.0, "always on"), row(1, 0.0, "dead"), row(2, 0.25, "")),
      {"faithfulness": 0.0})


def test_summary_figure(tmp_path):
  fig = component_figures.plot_summary(hand_summary(),
                                       str(tmp_path / "s.png"))
  assert written(tmp_path / "s.png")
  title, note = texts(fig)
  assert title == ("How often each component is active (APD, 100 fresh "
                   "examples)")
  assert note.startswith("firing frequency: the fraction of examples on "
                         "which the component is active (")
  (ax,) = panels(fig)
  assert ax.get_yscale() == "log" and ax.get_title() == (
      "all components: 2 of 3 alive")
  assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "1"]
  heights = [p.get_height() for p in ax.patches]
  assert heights[:2] == [1.0, 0.25] and 0 < heights[2] < 0.01  # dead: floor
  assert [t.get_text() for t in fig.legends[0].get_texts()] == [
      "alive", "always on (≥ 99%)", "dead (never)"]


@pytest.mark.parametrize("n", [1, 6])
def test_top_inputs_figure(tmp_path, n):
  tops = [summary_lib.TopInputs("", c, 0.1 * (c + 1), np.eye(3, 5) * (c + 1),
                                np.ones(3), np.full(3, 0.5))
          for c in range(n)]
  fig = component_figures.plot_top_inputs(tops, str(tmp_path / "t.png"))
  assert written(tmp_path / "t.png")
  assert texts(fig)[0].startswith(f"Top inputs of all {n} components")
  assert f"one colour scale (±{n:g})" in texts(fig)[1]
  shown = [a for a in panels(fig) if a.get_title()]
  assert len(shown) == n               # most frequent first
  assert shown[0].get_title() == (f"c{n - 1}: freq {0.1 * n:.3f}, "
                                  f"ablation 0.5")
  assert shown[0].get_xlabel() == "input entry (index)"
  assert is_integer(shown[0].get_xticks())
  assert colorbar_labels(fig) == ["input value"]
  assert component_figures.plot_top_inputs([], str(tmp_path / "x")) is None

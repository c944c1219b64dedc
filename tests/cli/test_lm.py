"""The transformer target from the command line's config: SPD on every
matrix of a tiny model, per position, with the top-contexts report."""

import html.parser
import importlib.util
import json
import pathlib

import numpy as np
import pytest

from apd_jax.analysis import summary as summary_lib
from apd_jax.cli import experiment
from apd_jax.cli import frontier
from apd_jax.engine import export
from apd_jax.targets import lm

ROOT = pathlib.Path(__file__).parents[2]


def load(name, arg=None):
  spec = importlib.util.spec_from_file_location(
      name, ROOT / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


class Checker(html.parser.HTMLParser):
  """Counts tags closed out of order and the marked positions."""
  VOID = ("meta",)

  def __init__(self):
    super().__init__()
    self.stack, self.errors, self.marks = [], 0, 0

  def handle_starttag(self, tag, attrs):
    if tag not in self.VOID:
      self.stack.append(tag)
    self.marks += tag == "mark"

  def handle_endtag(self, tag):
    if not self.stack or self.stack.pop() != tag:
      self.errors += 1


@pytest.mark.long
def test_spd_on_every_matrix_of_a_tiny_transformer(tmp_path):
  c = load("spd_lm", "tiny")
  summary = experiment.train_and_evaluate(c, str(tmp_path))
  names = [k[len("alive/"):] for k in summary if k.startswith("alive/")]
  assert sorted(n.split("'")[5] for n in names) == [
      "key", "mlp_in", "mlp_out", "out", "query", "value"]
  assert np.isfinite(summary["stochastic_recon"]) and summary["alive"] > 0
  assert summary["heldout_nats_per_byte_target"] < np.log(256)
  assert np.isfinite(summary["heldout_nats_per_byte_masked"])
  assert np.isfinite(summary["heldout_nats_per_byte_active"])
  # Each position of each window is an example: L0 counts per position.
  counts = summary["components"]["counts"]
  assert summary["components"]["n_examples"] == 1 * 8 * 16
  assert 0 < summary["heldout_components_described"] <= sum(
      g["total"] for g in counts.values()) == 6 * 8
  checker = Checker()
  page = (tmp_path / "top_contexts.html").read_text()
  checker.feed(page)
  assert checker.errors == 0 and not checker.stack
  assert checker.marks == sum(
      line.startswith("  G ") for line in
      (tmp_path / "top_contexts.txt").read_text().splitlines())
  assert checker.marks > 0 and page.startswith("<!DOCTYPE html>")
  # The saved decomposition reloads with its 3-D attention kernels.
  again = export.load(str(tmp_path / "decomposition"))
  rows = dict(zip(again.target.names, again.target.row_axes, strict=True))
  assert rows["['params']['block_0']['out']['kernel']"] == 2
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["target"]["name"] == "lm"
  assert config["method"]["recon"] == "kl"


def test_architecture_is_read_from_the_params_and_contexts_are_marked():
  c = load("spd_lm", "tiny")
  params = lm.init(__import__("jax").random.PRNGKey(0),
                   **{k: c.target[k] for k in lm.ARCH})
  arch = lm.config_of(params)
  assert (arch.n_layers, arch.d_model, arch.n_heads, arch.d_mlp,
          arch.context, arch.tied) == (1, 32, 2, 64, 16, True)
  window = np.frombuffer(b"def f(x):\n  return x", np.uint8).astype(np.int32)
  assert lm.context_of(window, 4) == ("def ", "f", "(")


def test_contexts_are_written_with_the_given_decoder(tmp_path):
  """Token ids of any vocabulary, written as text by `decode`."""
  tops = [summary_lib.TopInputs(
      "['mlp']", 3, 0.25, inputs=np.array([[70_000, 1, 2, 3]]),
      scores=np.array([0.9]), ablation=np.array([0.5]),
      positions=np.array([2]))]
  names = {70_000: " the", 1: " cat", 2: " sat", 3: " down"}
  lm.write_contexts(tops, str(tmp_path),
                    decode=lambda ids: "".join(names[i] for i in ids))
  text = (tmp_path / "top_contexts.txt").read_text()
  assert "' the cat'[[' sat']] -> ' down'" in text
  assert "<mark> sat</mark>" in (tmp_path / "top_contexts.html").read_text()
  assert lm.decode_bytes([104, 105]) == "hi"          # the default


@pytest.mark.long
def test_apd_per_position_on_a_tiny_transformer(tmp_path):
  c = load("apd_lm", "tiny")
  summary = experiment.train_and_evaluate(c, str(tmp_path))
  # Batch top-k over the 8 windows × 16 positions keeps int(2 · 128).
  assert summary["l0"] == 2.0
  assert summary["components"]["n_examples"] == 1 * 8 * 16
  assert np.isfinite(summary["topk_recon"])
  log = [json.loads(line) for line in
         (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert log[-1]["faithfulness"] < log[0]["faithfulness"]
  assert np.isfinite(summary["heldout_nats_per_byte_masked"])
  lines = (tmp_path / "top_contexts.txt").read_text().splitlines()
  assert any(line.startswith("  attribution ") for line in lines)
  assert summary["heldout_components_described"] > 0


@pytest.mark.long
def test_vpd_on_every_matrix_of_a_tiny_transformer(tmp_path):
  """VPD with its CI transformer over the positions and one set of
  sources per position, through the command line's run and report."""
  c = load("vpd_lm", "tiny")
  summary = experiment.train_and_evaluate(c, str(tmp_path))
  for key in ("pgd_recon", "stochastic_recon", "ci_masked_recon",
              "heldout_nats_per_byte_masked", "heldout_nats_per_byte_active"):
    assert np.isfinite(summary[key]), key
  assert summary["components"]["n_examples"] == 1 * 8 * 16
  log = [json.loads(line) for line in
         (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert log[-1]["loss"] < log[0]["loss"]
  again = export.load(str(tmp_path / "decomposition"))
  ci = again.causal_importances(np.zeros((2, 16), np.int32))
  assert {v.shape for v in ci.values()} == {(2, 16, 8)}
  # The run is a point of the LM frontier.
  (point,) = frontier.collect([str(tmp_path)])
  assert point["method"] == "VPD" and point["subcomponents"] == 6 * 8
  assert point["l0_fraction"] == summary["l0"] / 48
  assert point["gap_masked"] == (summary["heldout_nats_per_byte_masked"]
                                 - summary["heldout_nats_per_byte_target"])

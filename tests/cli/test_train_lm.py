"""Training the transformer target: the script's run on the tiny config."""

import importlib.util
import json
import math
import pathlib

import flax.serialization
import jax

from apd_jax.cli import train_lm
from apd_jax.models import text
from apd_jax.models import transformer as T
from apd_jax.targets import lm

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_tiny_training_learns_and_writes_its_outputs(tmp_path):
  config = load("lm_config", ROOT / "configs" / "lm_target.py").get_config(
      "tiny")
  model = T.TransformerConfig(**config.model)
  corpus = text.stdlib_corpus(**config.corpus)
  # At init the model is near uniform over the 256 bytes.
  fresh = lm.heldout_loss(T.init(jax.random.PRNGKey(0), model), model,
                          corpus.heldout)
  assert abs(fresh - math.log(256)) < 0.1
  summary = train_lm.train_and_write(config, str(tmp_path))
  assert summary["heldout_nats_per_byte"] < 0.85 * math.log(256)
  assert summary["heldout_bits_per_byte"] == (
      summary["heldout_nats_per_byte"] / math.log(2))
  assert summary["train_files"] > 0 and summary["heldout_files"] > 0
  log = [json.loads(line) for line in
         (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in log] == [20, 40] and "heldout" in log[-1]
  assert "heldout" not in log[0]              # eval_every = 40
  assert log[-1]["heldout"] == summary["heldout_nats_per_byte"]
  params = flax.serialization.from_bytes(
      T.init(jax.random.PRNGKey(1), model),
      (tmp_path / "target_params.msgpack").read_bytes())
  again = lm.heldout_loss(params, model, corpus.heldout)
  assert abs(again - summary["heldout_nats_per_byte"]) < 1e-5
  assert (tmp_path / "losses.png").stat().st_size > 0
  assert json.loads((tmp_path / "config.json").read_text())["steps"] == 40

"""The committed campaign results and the README table made of them."""

import os

import pytest

from apd_jax.cli import results

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _row(entry="spd_tms_40_10", ok=2):
  return dict(entry=entry, method="spd", succeeded=ok, seeds=3,
              mmcs=0.99951, mmcs_sd=0.004, ml2r=1.0123, ml2r_sd=0.01,
              steps=40000, train_seconds=7200.0,
              per_seed=[dict(success=i < ok) for i in range(3)])


META = dict(date="2026-12-07", jax="0.10.2", devices="1 × cpu")


def test_export_load_and_table(tmp_path):
  path = results.export(_row("spd_tms_40_10:identity"), META, str(tmp_path),
                        "python scripts/scoreboard.py --seeds=3")
  assert os.path.basename(path) == "spd_tms_40_10_identity.json"
  results.export(_row(), META, str(tmp_path), "python x.py")
  records = results.load(str(tmp_path))
  assert [r["entry"] for r in records] == ["spd_tms_40_10",
                                           "spd_tms_40_10:identity"]
  text = results.table(records)
  assert ("| `spd_tms_40_10` | SPD | 2 of 3 | mmcs 0.9995 ± 0.004; "
          "ml2r 1.012 ± 0.01 | 40000 | 2.0 h | 2026-12-07 (1 × cpu) |"
          in text)
  assert "python scripts/scoreboard.py --seeds=3\npython x.py" in text
  vpd = dict(_row("vpd_tms_5_2"), method="vpd", ci_check=1)
  results.export(vpd, META, str(tmp_path), "python x.py")
  assert ("| `vpd_tms_5_2` | VPD | 2 of 3 | mmcs 0.9995 ± 0.004; "
          "ml2r 1.012 ± 0.01; CI check 1 of 3 |" in results.table(
              results.load(str(tmp_path))))


def test_render_replaces_only_the_block(tmp_path):
  results.export(_row(), META, str(tmp_path), "cmd")
  text = f"before\n{results.BEGIN}\nold table\n{results.END}\nafter\n"
  out = results.render(text, str(tmp_path))
  assert out.startswith(f"before\n{results.BEGIN}\n| entry |")
  assert out.endswith(f"{results.END}\nafter\n")
  assert "old table" not in out
  assert results.render(out, str(tmp_path)) == out
  with pytest.raises(ValueError, match="block"):
    results.render("no markers", str(tmp_path))


def test_readme_table_is_generated_from_docs_results():
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  assert results.render(text, os.path.join(ROOT, "docs", "results")) == text

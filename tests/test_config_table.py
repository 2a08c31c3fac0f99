"""docs/config.md lists every config field, as generated from the config itself, and stays true."""

import dataclasses
import re
from pathlib import Path

import ml_collections

from configs import base
from ssa_jax.model.config import ModelConfig, RopeScaling, SSAConfig
from ssa_jax.train import config_table

REPO = Path(__file__).resolve().parents[1]


def _rows(text: str) -> dict[str, list[str]]:
  """{field path: its other cells} of every table row of a docs/config.md text."""
  rows = {}
  for line in text.splitlines():
    m = re.match(r"^\| `([\w.]+)` \| (.*) \|$", line)
    if m:
      rows[m.group(1)] = [c.strip() for c in re.split(r"(?<!\\)\|", m.group(2))]
  return rows


def _leaves(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every leaf path of a ConfigDict, written independently of the generator (through to_dict)."""
  out = []
  for key, value in cfg.to_dict().items():
    if isinstance(value, dict) and value:
      out += _leaves(ml_collections.ConfigDict(value), f"{prefix}{key}.")
    else:
      out.append(prefix + key)
  return out


def test_docs_config_md_is_what_the_generator_prints():
  text = (REPO / "docs" / "config.md").read_text()
  assert text == config_table.table(), ("docs/config.md is stale: regenerate it with "
                                        "`python -m ssa_jax.train.config_table > docs/config.md`")


def test_every_field_of_every_mode_and_of_the_model_dataclasses_has_a_row():
  rows = _rows(config_table.table())
  expected = set()
  for mode in ("pretrain", "finetune", "demo"):
    expected |= {p for p in _leaves(base.get_config("pythia160m", "ssa", mode=mode)) if not p.startswith("model.")}
  for cls, section in ((ModelConfig, "model"), (SSAConfig, "model.ssa"), (RopeScaling, "model.rope_scaling")):
    expected |= {f"{section}.{f.name}" for f in dataclasses.fields(cls)}
  assert expected - set(rows) == set(), "fields without a row"
  assert set(rows) - expected == set(), "rows of no field"
  # The architecture fields a new user looked for, with their types; values known by hand (configs/base.py).
  for name in ("num_layers", "d_model", "mlp_dim"):
    assert rows[f"model.{name}"][0] == "int" and rows[f"model.{name}"][1].startswith("required"), rows[f"model.{name}"]
  assert rows["train.lr"][:2] == ["float", "`0.0006` (finetune: `1e-06`; demo: `0.003`)"]
  assert rows["model.dtype"][1] == "`'float32'`; get_config sets `'bfloat16'` (demo: `'float32'`)"
  assert "reader streams" in rows["data.num_streams"][2]
  assert rows["train.microbatches"][2] == "gradient accumulation"  # a comment naming one of several fields on a line

"""Every config file in configs/ loads through ml_collections and builds a valid ModelConfig."""

from pathlib import Path

import pytest
import importlib.util

from ssa_jax.config import model_config_from_dict
from ssa_jax.model import count_params, is_temperature_param, param_shapes

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def load_config(path: Path):
  spec = importlib.util.spec_from_file_location(f"config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


RUN_CONFIGS = sorted(p for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "base", "models", "table8"))


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_config_file_builds_a_valid_model(path):
  config = load_config(path)
  model_cfg = model_config_from_dict(config.model)
  assert model_cfg.ssa.enabled == ("_ssa" in path.stem or "_table8_" in path.stem)
  assert (config.init.hf_dir == "") and (config.data.demo == path.stem.startswith(("tiny", "study_", "compare_")))
  assert config.mode == ("finetune" if path.stem.endswith("_ft") else "demo" if config.data.demo else "pretrain")
  # Every shipped config trains on windows its model has positions for.
  assert config.train.seq_len <= model_cfg.max_seq_len
  assert (model_cfg.ssa.token_kind == "shared") == ("_ssa_ws" in path.stem)


def test_presets_have_the_published_sizes():
  sizes = {}
  for name in ("gpt2", "pythia160m", "pythia410m"):
    config = load_config(CONFIG_DIR / f"{name}.py")
    sizes[name] = count_params(param_shapes(model_config_from_dict(config.model)))
  # Published parameter counts (with embeddings): GPT-2 124.4M, Pythia-160M 162.3M, Pythia-410M 405.3M.
  assert sizes == {"gpt2": 124_439_808, "pythia160m": 162_322_944, "pythia410m": 405_334_016}

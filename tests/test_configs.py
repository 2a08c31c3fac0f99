"""Every config file in configs/ loads through ml_collections and builds a valid ModelConfig."""

from pathlib import Path

import pytest
import importlib.util

from configs import base
from ssa_jax.model.config import model_config_from_dict
from ssa_jax.model.params import count_params, param_shapes

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
  # The learned position term is pinned at the end of the training window, not at model.max_seq_len.
  assert model_cfg.ssa.position_reference_len == config.train.seq_len
  # Fine-tunes give the temperatures their own rates (configs/base.py FINETUNE_TEMPERATURE_LR); others train
  # them like every other parameter.
  # The demo's fine-tune keeps their absolute rates (lr x multiplier) at the paper fine-tune's.
  rates = (config.train.lr * config.train.temperature_scalar_lr_multiplier,
           config.train.lr * config.train.temperature_matrix_lr_multiplier)
  if config.mode == "finetune":
    assert rates == pytest.approx(tuple(1e-6 * m for m in base.FINETUNE_TEMPERATURE_LR.values()))
  else:
    assert (config.train.temperature_scalar_lr_multiplier, config.train.temperature_matrix_lr_multiplier) == (1, 1)
  assert "temperature_lr_multiplier" not in config.train


def test_demo_finetune_scales_the_papers_finetune_to_the_demo():
  ft, paper = load_config(CONFIG_DIR / "tiny_ft.py"), load_config(CONFIG_DIR / "pythia160m_ft.py")
  for field in ("steps", "warmup_steps", "schedule", "weight_decay", "b1", "b2"):
    assert ft.train[field] == paper.train[field], field
  assert ft.train.global_batch_size == 8  # half the paper's 16: nine fine-tunes fit a 2-core CPU
  assert ft.train.seq_len == load_config(CONFIG_DIR / "tiny.py").train.seq_len == 128
  # The paper's fine-tune / pre-training peak rate, 1e-6 / 6e-4, applied to the demo's 3e-3.
  assert ft.train.lr == pytest.approx(5e-6)
  assert ft.model.ssa.position_tau_at_end == 1.001 and ft.data.demo


def test_presets_have_the_published_sizes():
  sizes = {}
  for name in ("gpt2", "pythia160m", "pythia410m"):
    config = load_config(CONFIG_DIR / f"{name}.py")
    sizes[name] = count_params(param_shapes(model_config_from_dict(config.model)))
  # Published parameter counts (with embeddings): GPT-2 124.4M, Pythia-160M 162.3M, Pythia-410M 405.3M.
  assert sizes == {"gpt2": 124_439_808, "pythia160m": 162_322_944, "pythia410m": 405_334_016}

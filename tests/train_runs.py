"""Training runs for the end-to-end tests: the demo corpus, a tiny run config, the run as a command line, and
what a finished run left (its losses, its final parameters)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
from flax import traverse_util

from ssa_jax.formats import checkpoint
from train_configs import tiny_run_config

REPO = Path(__file__).resolve().parents[1]


def demo_corpus(tmp_path_factory) -> tuple[str, str]:
  """The demo corpus (SlimPajama layout) and a small BPE trained on it, in a private cache."""
  from ssa_jax.data import demo

  cache = tmp_path_factory.mktemp("cache")
  return demo.ensure_demo_corpus(str(cache)), demo.ensure_demo_tokenizer(str(cache), 512)


def demo_run_config(corpus, **train):
  """tiny_run_config on the demo corpus with its 512-token vocabulary."""
  config = tiny_run_config(corpus[0], corpus[1], **train)
  config.model.vocab_size = 512
  return config


def run_losses(workdir) -> dict[int, float]:
  """{step: training loss} from WORKDIR/metrics.jsonl."""
  lines = [json.loads(l) for l in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in lines if "loss" in r}


def run_cli_args(config, workdir) -> list[str]:
  """The config as --config.x=y overrides of configs/tiny_ssa.py (what a user would type)."""
  c = config
  over = {
      "model.vocab_size": c.model.vocab_size, "model.d_model": c.model.d_model, "model.num_layers": c.model.num_layers,
      "model.num_heads": c.model.num_heads, "model.mlp_dim": c.model.mlp_dim, "model.max_seq_len": c.model.max_seq_len,
      "data.path": c.data.path, "data.tokenizer_path": c.data.tokenizer_path,
      **{f"train.{k}": v for k, v in c.train.items()}, "eval.at_end": False, "eval.passkey": False,
  }
  return [f"--config={REPO}/configs/tiny_ssa.py", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in over.items()]


def run_python(args, env_extra=None, check=True) -> subprocess.CompletedProcess:
  """`python ARGS` in the repository, output captured, ten minutes at most."""
  env = {**os.environ, **(env_extra or {})}
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, check=check,
                        timeout=600)


def run_final_params(workdir) -> dict:
  """The flattened parameters of WORKDIR's latest checkpoint."""
  _, variables, _ = checkpoint.load_model(Path(workdir) / "checkpoints")
  return traverse_util.flatten_dict(jax.device_get(variables["params"]))


def assert_same_run(straight, other) -> None:
  """OTHER's losses, step for step, and final parameters, bit for bit, equal STRAIGHT's (an exact resume)."""
  assert run_losses(other) == run_losses(straight)
  a, b = run_final_params(straight), run_final_params(other)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg="/".join(k))

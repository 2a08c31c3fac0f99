"""How far a fine-tune moves SSA's new parameters: the measurement behind the temperatures' learning rates.

  python -m ssa_jax.experiments.finetune_drift --checkpoint=runs/tiny --variants=ssa,ssa_ws \
      --matrix_multipliers=1e4,1e3,100,10 [--scalar_multiplier=1e4 --lr=1e-6 --steps=107 --batch=8]

SSA is added near identity to a pretrained vanilla checkpoint (a training workdir or checkpoint of
configs/tiny.py), which is then fine-tuned with the fine-tune optimizer (configs/base.py FINETUNE: AdamW 0.9 /
0.95, constant lr, no weight decay, no warmup) on the same training batches for every setting. Reported per
setting: each matrix's relative change ||W_T - W_0|| / ||W_0|| (the token MLP's w1), the largest entry of the
zero-initialised ones (w2, weight sharing's w), the scalars' factor (sigmoid(alpha) after / before), the range
of tau_q and the share of tokens in tanh's saturation (|tanh f| > 0.9) on held-out batches, and the held-out
loss of the pretrained model, of the SSA model at step 0 and after the fine-tune. One JSON line per setting.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import time
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from configs import base, models
from ssa_jax.data.pipeline import make_lm_iterator
from ssa_jax.data.tokenizer import load_tokenizer
from ssa_jax.formats import checkpoint
from ssa_jax.model.config import ModelConfig, SSAConfig
from ssa_jax.model.decoder import BUFFERS, Decoder
from ssa_jax.model.params import init_variables, ssa_groups
from ssa_jax.runtime import cli_errors
from ssa_jax.train.optim import learning_rate_schedule, make_optimizer
from ssa_jax.train.state import TrainState
from ssa_jax.train.step import make_train_step, next_token_loss


def with_fresh_ssa(vanilla: dict, model_cfg: ModelConfig, seed: int) -> dict:
  """The vanilla variables plus SSA's freshly initialised ones for `model_cfg` (as a fine-tune from HF starts)."""
  fresh = jax.device_get(init_variables(model_cfg, jax.random.PRNGKey(seed)))
  params = traverse_util.flatten_dict(fresh["params"])
  for path, value in traverse_util.flatten_dict(jax.device_get(vanilla["params"])).items():
    if path not in params:
      raise KeyError(f"{'/'.join(path)}: in the vanilla checkpoint but not in the SSA model")
    params[path] = value
  return {**fresh, "params": traverse_util.unflatten_dict(params)}


def finetune(model: Decoder, variables: dict, train_cfg, batches_NBT1: Iterable[np.ndarray]) -> dict:
  """`variables` after one optimizer step (make_optimizer(train_cfg)) per batch of seq_len + 1 token windows."""
  tx = make_optimizer(train_cfg, variables["params"], model.config)
  step = jax.jit(make_train_step(model, tx, learning_rate_schedule(train_cfg), 1, loss_chunk_size=0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], buffers=variables[BUFFERS],
                     opt_state=tx.init(variables["params"]))
  for tokens_BT1 in batches_NBT1:
    state, _ = step(state, {"tokens": jnp.asarray(tokens_BT1)})
  return {**variables, "params": state.params}


def heldout_loss(model: Decoder, variables: dict, batches_NBT1: Iterable[np.ndarray]) -> float:
  """Mean next-token loss over the batches (all full, so the mean over tokens)."""
  loss = jax.jit(lambda v, t: next_token_loss(model, v, t, 0)[0])
  return float(np.mean([float(loss(variables, jnp.asarray(t))) for t in batches_NBT1]))


def drift(before: dict, after: dict, model_cfg: ModelConfig) -> dict[str, dict[str, float]]:
  """Per SSA parameter ('/'-joined path): 'relative' ||after - before|| / ||before|| where before is non-zero,
  else 'absolute' max |after| (zero-initialised matrices); single scalars under 'scalar': after / before of
  their positive value (sigmoid for alpha, exp for log_tau, softplus for ssmax_s; beta's max |after|)."""
  positive = {"alpha": jax.nn.sigmoid, "log_tau": jnp.exp, "ssmax_s": jax.nn.softplus}
  out: dict[str, dict[str, float]] = {"relative": {}, "absolute": {}, "scalar": {}}
  b_flat, a_flat = traverse_util.flatten_dict(before), traverse_util.flatten_dict(after)
  for path, group in ssa_groups(model_cfg).items():  # every group is 'scalar' or 'matrix'
    name = "/".join(path)
    b, a = np.asarray(b_flat[path], np.float64), np.asarray(a_flat[path], np.float64)
    if group == "scalar" and path[-1] in positive:
      fn = positive[path[-1]]
      ratio = np.asarray(fn(a)) / np.asarray(fn(b))
      out["scalar"][name] = float(ratio.max() if ratio.max() - 1 > 1 - ratio.min() else ratio.min())
    elif np.linalg.norm(b) > 0:
      out["relative"][name] = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    else:
      out["absolute"][name] = float(np.abs(a).max())
  return out


def tau_summary(model: Decoder, variables: dict, tokens_BT: np.ndarray) -> dict[str, float]:
  """tau_q's range over every layer, head and position, and the share of (token, head) entries whose token term
  tau - tau_pos is in tanh's saturation (|tanh f| > 0.9); SSA's 'log' position term only."""
  cfg = model.config
  if "q" not in cfg.ssa.components:
    return {"tau_q_min": None, "tau_q_max": None, "saturated": None}
  _, state = jax.jit(lambda v, t: model.apply(v, t, mutable=["intermediates"]))(variables, tokens_BT)
  n_T1 = np.arange(1, tokens_BT.shape[1] + 1, dtype=np.float64)[:, None]
  layers = range(cfg.num_layers)
  tau_LBTH = np.stack([state["intermediates"][f"layers_{i}"]["attn"]["tau_q"][0] for i in layers]).astype(np.float64)
  saturated = None
  if cfg.ssa.token and cfg.ssa.position and cfg.ssa.position_kind == "log":
    alpha_L1H = np.stack([variables["params"][f"layers_{i}"]["attn"]["ssa_q"]["alpha"] for i in layers])[:, None]
    tok_LBTH = tau_LBTH - (1.0 + np.log(n_T1) / (1.0 + np.exp(-alpha_L1H.astype(np.float64))))[:, None]
    saturated = float(np.mean(np.abs(tok_LBTH) > 0.9))
  return {"tau_q_min": float(tau_LBTH.min()), "tau_q_max": float(tau_LBTH.max()), "saturated": saturated}


def measure(vanilla_model: Decoder, vanilla: dict, ssa: SSAConfig, train_cfg, train_NBT1: np.ndarray,
            heldout_NBT1: np.ndarray, seed: int = 0) -> dict[str, Any]:
  """One setting: SSA `ssa` added to the pretrained model, fine-tuned on `train_NBT1`; the figures above."""
  cfg = dataclasses.replace(vanilla_model.config, ssa=ssa).validate()
  model = Decoder(cfg)
  start = with_fresh_ssa(vanilla, cfg, seed)
  t0 = time.time()
  end = finetune(model, start, train_cfg, train_NBT1)
  d = drift(start["params"], end["params"], cfg)
  return {
      "w1_relative_max": max((v for k, v in d["relative"].items() if "/w1/kernel" in k), default=None),
      "zero_init_absolute_max": max(d["absolute"].values(), default=None),
      "scalar_factor_range": [min(d["scalar"].values(), default=1.0), max(d["scalar"].values(), default=1.0)],
      "heldout_loss_pretrained": heldout_loss(vanilla_model, vanilla, heldout_NBT1),
      "heldout_loss_step0": heldout_loss(model, start, heldout_NBT1),
      "heldout_loss_end": heldout_loss(model, end, heldout_NBT1),
      **tau_summary(model, end, heldout_NBT1[0][:, :-1]),
      "wall_s": round(time.time() - t0, 1),
  }


def split_batches(run_config: dict, split: str, seq_len: int, batch: int, count: int | None) -> np.ndarray:
  """The first `count` batches (batch, seq_len + 1) of `split` (all of it when None and not 'train') of the
  run config's corpus and tokenizer (data.path / data.tokenizer_path as a run resolved them)."""
  data = ml_collections.ConfigDict(run_config["data"])
  it = make_lm_iterator(data, split=split, seq_len=seq_len, global_batch_size=batch, process_index=0,
                        process_count=1, tokenizer=load_tokenizer(data.tokenizer_path), repeat=split == "train",
                        max_batches=count)
  with contextlib.closing(it):
    return np.stack([np.asarray(b["tokens"]) for b in it])


def main(argv: list[str] | None = None) -> None:
  """The command line (see the module docstring)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--checkpoint", required=True, help="pretrained vanilla workdir or checkpoint (configs/tiny.py)")
  p.add_argument("--variants", default="ssa,ssa_ws")
  p.add_argument("--matrix_multipliers", default="1e4,1e3,100,10")
  p.add_argument("--scalar_multiplier", type=float, default=base.FINETUNE_TEMPERATURE_LR[
      "temperature_scalar_lr_multiplier"])
  p.add_argument("--lr", type=float, default=base.FINETUNE["lr"])
  p.add_argument("--steps", type=int, default=base.FINETUNE["steps"])
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--seq_len", type=int, default=128)
  p.add_argument("--heldout_batches", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  vanilla_model, vanilla, run_config = checkpoint.load_model(args.checkpoint)
  vanilla = jax.device_get(vanilla)
  train_NBT1 = split_batches(run_config, "train", args.seq_len, args.batch, args.steps)
  heldout_NBT1 = split_batches(run_config, "test", args.seq_len, args.batch, args.heldout_batches)
  train_cfg = ml_collections.ConfigDict({**base.get_config("tiny", "ssa", mode="finetune").train.to_dict(),
                                         "lr": args.lr, "steps": args.steps,
                                         "temperature_scalar_lr_multiplier": args.scalar_multiplier})
  for variant in args.variants.split(","):
    ssa = SSAConfig(**{**models.SSA_DEFAULTS, **models.SSA_VARIANTS[variant], "position_tau_at_end": 1.001,
                       "position_reference_len": args.seq_len})
    for mult in (float(m) for m in args.matrix_multipliers.split(",")):
      train_cfg.temperature_matrix_lr_multiplier = mult
      row = measure(vanilla_model, vanilla, ssa, train_cfg, train_NBT1, heldout_NBT1, args.seed)
      print(json.dumps({"variant": variant, "lr": args.lr, "scalar_multiplier": args.scalar_multiplier,
                        "matrix_multiplier": mult, **row}), flush=True)


if __name__ == "__main__":
  cli_errors.run_argv(main)

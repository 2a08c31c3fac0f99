"""Training metrics: FLOPs and MFU (explicit per-chip peak table), and writers to JSONL, TensorBoard, console."""

from __future__ import annotations

import json
import math
import sys
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from etils import epath

from ssa_jax.model.config import ModelConfig
from ssa_jax.model.methods import method_class
from ssa_jax.runtime.gcs import TENSORBOARD, require_gcs

# Dense bf16 peak FLOP/s per chip (vendor datasheets, without sparsity). Matched against device_kind by prefix;
# a device not listed reports MFU as null rather than a guess.
PEAK_FLOPS_BF16 = {
    "NVIDIA H200": 989e12,
    "NVIDIA H100 PCIe": 756e12,
    "NVIDIA H100": 989e12,  # SXM ('NVIDIA H100 80GB HBM3')
    "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "NVIDIA A10G": 125e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,  # v5e
    "TPU v5e": 197e12,
    "TPU v5": 459e12,  # v5p
    "TPU v6 lite": 918e12,  # Trillium
    "TPU v6e": 918e12,
}


def peak_flops_per_device(device_kind: str) -> float | None:
  """The chip's dense bf16 peak FLOP/s from PEAK_FLOPS_BF16 (longest matching prefix), None when unlisted."""
  prefix = max(filter(device_kind.startswith, PEAK_FLOPS_BF16), key=len, default=None)
  return PEAK_FLOPS_BF16.get(prefix)


def decoder_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token of the decoder without SSA: 6 x matmul weights + the causal attention matmuls.

  The weight term is 6 x (non-embedding matmul parameters + LM head): 2 FLOPs a weight forward, 4 backward.
  The attention term counts QK^T and PV over the causal half of the T x T scores only, as MaxText does
  (PaLM's appendix B counts the full square, 12 x L x H x D x T, twice this). SSA's temperature matmuls are
  counted apart, by `ssa_flops_per_token`.
  """
  d, L, H, K, D = cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  attn_proj = d * (H * D) * 2 + d * (K * D) * 2
  mlp = d * cfg.mlp_dim * (3 if cfg.gated_mlp else 2)
  matmul_params = L * (attn_proj + mlp) + d * cfg.vocab_size
  # QK^T and PV: 2 matmuls of 2*T*D flops per query token per head; causal masking halves the useful work.
  attention = L * H * D * seq_len * 2 * 2 / 2
  return 6.0 * matmul_params + 3.0 * attention


def ssa_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token of SSA's temperature matmuls (6 a weight: forward 2, backward 4).

  Token kind 'mlp': W1 (d -> hidden) and W2 (hidden -> heads) per scaled component. 'shared' (weight sharing):
  one vector over the component's whole projection per output head, heads x (heads x D), with scope 'layer';
  one D-vector per head with scope 'head'. The frequency feature (one multiply per head), the position term
  and the elementwise work (tanh, GeLU, the scaling of q / v) are not matmuls and count as zero, like norms
  and softmax in `decoder_flops_per_token`. `seq_len` is unused (no temperature depends on T) and kept for symmetry.
  """
  del seq_len
  ssa = cfg.ssa
  if not ssa.enabled or not ssa.token:
    return 0.0
  weights_per_layer = 0
  for comp in ssa.components:
    heads = cfg.num_heads if comp == "q" else cfg.num_kv_heads
    if ssa.token_kind == "mlp":
      hidden = int(round(cfg.d_model * ssa.hidden_ratio))
      weights_per_layer += cfg.d_model * hidden + hidden * heads
    elif ssa.token_kind == "shared":
      width = heads * cfg.head_dim if ssa.weight_sharing_scope == "layer" else cfg.head_dim
      weights_per_layer += heads * width
  return 6.0 * cfg.num_layers * weights_per_layer


def attention_method_flops_per_token(cfg: ModelConfig) -> float:
  """Training FLOPs per token of the attention method's own matmuls, as its module states them (0 for plain
  softmax; e.g. 6 d H D a layer for the per-element output gate)."""
  return method_class(cfg).flops_per_token(cfg)


def training_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """Training FLOPs per token of the whole model: the decoder's, SSA's temperature matmuls and the attention
  method's (for MFU)."""
  return (decoder_flops_per_token(cfg, seq_len) + ssa_flops_per_token(cfg, seq_len)
          + attention_method_flops_per_token(cfg))


def perplexity(loss: float) -> float:
  """exp(loss), capped at exp(50) (a diverged run's loss would overflow)."""
  return math.exp(min(loss, 50.0))


def mfu(tokens_per_s: float, flops_token: float, peak_per_device: float | None, num_devices: int) -> float | None:
  """Model FLOPs utilisation: achieved FLOP/s over the devices' peak; None where the peak is unknown."""
  return tokens_per_s * flops_token / (peak_per_device * num_devices) if peak_per_device else None


class MetricsWriter:
  """Appends one JSON object a line to WORKDIR/metrics.jsonl; mirrors scalars to TensorBoard and W&B (primary
  host)."""

  def __init__(self, workdir: epath.Path, tensorboard: bool, resume_step: int, wandb_run: Any = None):
    self.primary = jax.process_index() == 0
    self.path = workdir / "metrics.jsonl"
    self.tb = None
    self.wandb = wandb_run  # a train.wandb_run.WandbRun (primary host), or None
    self._kept: list[dict[str, Any]] = []  # the records up to resume_step (primary host)
    if not self.primary:
      return
    if self.path.exists():
      # After a resume, drop lines from steps past the restored checkpoint: they will be recomputed identically.
      kept = [l for l in self.path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= resume_step]
      self.path.write_text("".join(l + "\n" for l in kept))
      self._kept = [json.loads(l) for l in kept]
    if tensorboard:
      require_gcs(str(workdir), "--workdir (TensorBoard event files)", TENSORBOARD)
      from tensorboardX import SummaryWriter  # optional: only runs that write TensorBoard files need it

      self.tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

  def logged(self, step: int, key: str) -> Any:
    """`key`'s value at `step` in the records kept from before the resume (None: not logged, not primary)."""
    return next((r[key] for r in reversed(self._kept) if r["step"] == step and key in r), None)

  def write(self, record: dict[str, Any]) -> None:
    if not self.primary:
      return
    record = {k: _plain(v) for k, v in record.items()}
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    scalars = dict(_scalars(record))
    if self.tb is not None:
      for k, v in scalars.items():
        self.tb.add_scalar(k, v, record["step"])
    if self.wandb is not None:
      self.wandb.log(scalars, record["step"])

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()
    if self.wandb is not None:
      self.wandb.close()


def _scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
  """A record's numbers as (name, value); a per-layer list [x0, x1, ...] as 'name/layer_i'."""
  for k, v in record.items():
    if isinstance(v, (int, float)) and k != "step":
      yield k, v
    elif isinstance(v, list) and v and isinstance(v[0], (int, float)):
      yield from ((f"{k}/layer_{i}", x) for i, x in enumerate(v))


def _plain(v):
  if isinstance(v, (np.ndarray, jax.Array, np.generic)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  return v


class ConsoleProgress:
  """A concise line per log step: a progress bar, loss, lr, tokens/s, MFU, ETA.

  The ETA extrapolates the time per step measured in this session after its first step (`first_step_done`):
  the first step's compile, and the steps of an earlier session before a resume, are not steps still to come.
  """

  def __init__(self, total_steps: int, start_step: int, clock: Callable[[], float] = time.time):
    self.total, self.clock = total_steps, clock
    self._mark: tuple[int, float] | None = None  # (step, time) once the session's first step has finished
    self._start = start_step

  def first_step_done(self) -> None:
    """Called once the session's first step has finished (compiled and run): the ETA's origin."""
    if self._mark is None:
      self._mark = (self._start + 1, self.clock())

  def eta_s(self, step: int) -> float | None:
    """Seconds to `total_steps` at this session's pace since its first step; None before a second step."""
    if self._mark is None or step <= self._mark[0]:
      return None
    mark_step, mark_time = self._mark
    return (self.clock() - mark_time) / (step - mark_step) * (self.total - step)

  def line(self, step: int, m: dict[str, Any]) -> None:
    """Prints the progress line of `step` (primary host)."""
    if jax.process_index() != 0:
      return
    frac = step / max(self.total, 1)
    bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
    eta = self.eta_s(step)
    eta_text = "eta --" if eta is None else f"eta {eta / 60:.1f}m"
    mfu = f" mfu {m['mfu']:.1%}" if m.get("mfu") is not None else ""
    print(f"[{bar}] step {step}/{self.total} loss {m['loss']:.4f} lr {m['lr']:.2e} "
          f"gnorm {m['grad_norm']:.3f} {m['tokens_per_s']:,.0f} tok/s{mfu} {eta_text}", flush=True)


def format_duration(seconds: float) -> str:
  """'42.0s', '5m47s', '2h05m'."""
  if seconds < 60:
    return f"{seconds:.1f}s"
  minutes, secs = divmod(int(round(seconds)), 60)
  if minutes < 60:
    return f"{minutes}m{secs:02d}s"
  return f"{minutes // 60}h{minutes % 60:02d}m"


def log(msg: str) -> None:
  """One line on stderr, from the primary host only."""
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)

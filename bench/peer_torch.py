"""The torch peer of bench_step.py: the Hugging Face model of the same family and shapes, one train step timed.

  python bench/peer_torch.py --hf_config=CONFIG_JSON --batch=8 --seq_len=2048 --dtype=bfloat16

bench_step.py --peer=torch runs this first, in a subprocess, on the config.json that
`ssa_jax.formats.hf.config_to_hf` writes for the vanilla model. The step matches ours: float32 parameters and AdamW
state, the forward under bf16 autocast, SDPA attention, next-token cross-entropy over seq_len positions, gradient
clipping at 1.0, AdamW (fused on CUDA). On CUDA the model and loss run under torch.compile; on a CPU-only machine
the step runs eagerly (for tiny shapes: the code path is exercised, the figure means little). On a machine with an
NVIDIA GPU but a CPU-only torch, it prints why and skips. The result is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from typing import Callable

try:  # optional and heavy (the test extra): without them this peer prints a skip line instead of a figure
  import torch
  import transformers
except ImportError as e:
  print(json.dumps({"skipped": f"torch / transformers are not importable ({e}); "
                               "pip install -c constraints.txt -e '.[test]'"}))
  sys.exit(0)


def make_step(model: torch.nn.Module, params: list, dtype: str, cuda: bool) -> Callable:
  """step(tokens) -> loss: forward (compiled on CUDA), backward, clipping at 1.0 and AdamW, as our step does."""
  opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=cuda)

  def loss_of(tokens):
    with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      logits = model(input_ids=tokens[:, :-1]).logits
    return torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tokens[:, 1:].flatten())

  forward = torch.compile(loss_of) if cuda else loss_of

  def step(tokens):
    loss = forward(tokens)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss

  return step


def step_seconds(step: Callable, batches: list, n: int, cuda: bool) -> list[float]:
  """The seconds of each of `n` steps, each one waited for."""
  times = []
  for i in range(n):
    t0 = time.perf_counter()
    step(batches[i % len(batches)]).item()  # waits for the step, as bench_step's block_until_ready does
    if cuda:
      torch.cuda.synchronize()
    times.append(time.perf_counter() - t0)
  return times


def main() -> None:
  """Prints the peer's figures as one JSON line (or why it skipped, or ran out of memory)."""
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--hf_config", required=True, help="config.json of the vanilla model (transformers layout)")
  p.add_argument("--batch", type=int, required=True)
  p.add_argument("--seq_len", type=int, required=True)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=20, help="timed steps (bench_step.py: its rounds x steps)")
  p.add_argument("--warmup", type=int, default=3)
  args = p.parse_args()
  cuda = torch.cuda.is_available()
  if not cuda and (shutil.which("nvidia-smi") or os.path.exists("/dev/nvidia0")):
    print(json.dumps({"skipped": f"torch {torch.__version__} has no CUDA although this machine has an NVIDIA GPU: "
                                 "install a CUDA build of torch (https://pytorch.org/get-started/locally/)"}))
    return
  device = torch.device("cuda" if cuda else "cpu")
  with open(args.hf_config) as f:
    hf = json.load(f)
  hf.pop("torch_dtype", None)
  config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
  model.to(device).train()
  params = [q for q in model.parameters() if q.requires_grad]
  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=gen).to(device)
             for _ in range(4)]
  step = make_step(model, params, args.dtype, cuda)
  try:
    first_s = step_seconds(step, batches, 1, cuda)[0]  # compilation included
    step_seconds(step, batches, max(args.warmup - 1, 0), cuda)
    times = step_seconds(step, batches, args.steps, cuda)
  except torch.OutOfMemoryError as e:
    print(json.dumps({"error": f"out of memory: {str(e).splitlines()[0]}"}))
    return
  print(json.dumps({
      "name": f"HF {type(model).__name__} (torch {torch.__version__}, transformers {transformers.__version__})",
      "device": torch.cuda.get_device_name() if cuda else "cpu",
      "params": sum(q.numel() for q in params),
      "compiled": cuda, "fused_adamw": cuda, "attention": "sdpa",
      "precision": f"float32 params, {args.dtype} autocast" if args.dtype == "bfloat16" else "float32",
      "first_step_s": first_s, "step_s": min(times), "step_s_median": statistics.median(times),
      "tokens_per_s": args.batch * args.seq_len / min(times),
  }))


if __name__ == "__main__":
  main()

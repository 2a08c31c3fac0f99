"""The torch peer of bench_step.py: the Hugging Face model of the same family and shapes, one train step timed.

  python bench/peer_torch.py --hf_config=CONFIG_JSON --batch=8 --seq_len=2048 --dtype=bfloat16

bench_step.py --peer=torch runs this in a subprocess before JAX touches the accelerator (JAX preallocates most
of the GPU's memory), with the config.json that `ssa_jax.formats.hf.config_to_hf` writes for the vanilla model. The step
matches ours: float32 parameters and AdamW state, the forward under bf16 autocast, SDPA attention, next-token
cross-entropy over seq_len positions, gradient clipping at 1.0, AdamW (fused on CUDA). On CUDA the model and
loss run under torch.compile; on a CPU-only machine the step runs eagerly (for tiny shapes: the code path is
exercised, the figure means little). On a machine with an NVIDIA GPU but a CPU-only torch, it prints why and
skips. The result is one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time


def _nvidia_gpu_present() -> bool:
  return shutil.which("nvidia-smi") is not None or os.path.exists("/dev/nvidia0")


def _skip(reason: str) -> None:
  print(json.dumps({"skipped": reason}))
  sys.exit(0)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--hf_config", required=True, help="config.json of the vanilla model (transformers layout)")
  p.add_argument("--batch", type=int, required=True)
  p.add_argument("--seq_len", type=int, required=True)
  p.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16"))
  p.add_argument("--steps", type=int, default=5, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=4)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--lr", type=float, default=1e-4)
  args = p.parse_args()

  try:  # optional and heavy: without them this peer prints a skip line instead of a figure
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    _skip(f"torch / transformers are not importable ({e}); pip install -c constraints.txt -e '.[test]'")
  cuda = torch.cuda.is_available()
  if not cuda and _nvidia_gpu_present():
    _skip(f"torch {torch.__version__} has no CUDA although this machine has an NVIDIA GPU: install a CUDA build "
          "of torch (https://pytorch.org/get-started/locally/) to time the peer")
  device = torch.device("cuda" if cuda else "cpu")

  with open(args.hf_config) as f:
    hf = json.load(f)
  hf.pop("torch_dtype", None)
  config = transformers.AutoConfig.for_model(hf.pop("model_type"), **hf)
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
  model.to(device).train()
  params = [q for q in model.parameters() if q.requires_grad]
  opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, fused=cuda)
  amp_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None

  def loss_of(tokens):
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
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

  gen = torch.Generator().manual_seed(0)
  batches = [torch.randint(0, config.vocab_size, (args.batch, args.seq_len + 1), generator=gen).to(device)
             for _ in range(4)]
  sync = torch.cuda.synchronize if cuda else (lambda: None)

  def timed(n: int, offset: int) -> list[float]:
    times = []
    for i in range(n):
      t0 = time.perf_counter()
      loss = step(batches[(offset + i) % len(batches)])
      loss.item()  # waits for the step, as bench_step's block_until_ready does
      sync()
      times.append(time.perf_counter() - t0)
    return times

  try:
    compile_s = timed(1, 0)[0]
    timed(max(args.warmup - 1, 0), 1)
    times = []
    for r in range(args.rounds):
      times += timed(args.steps, r)
  except torch.OutOfMemoryError as e:
    print(json.dumps({"error": f"out of memory: {str(e).splitlines()[0]}"}))
    return
  fastest = min(times)
  print(json.dumps({
      "name": f"HF {type(model).__name__} (torch {torch.__version__}, transformers {transformers.__version__})",
      "device": torch.cuda.get_device_name() if cuda else "cpu",
      "params": sum(q.numel() for q in params),
      "compiled": cuda, "fused_adamw": cuda, "attention": "sdpa",
      "precision": f"float32 params, {args.dtype} autocast" if amp_dtype else "float32",
      "first_step_s": compile_s, "step_s": fastest, "step_s_median": statistics.median(times),
      "tokens_per_s": args.batch * args.seq_len / fastest,
  }))


if __name__ == "__main__":
  main()

#!/usr/bin/env bash
# Issue 11's table on this machine's GPU, in one command:
#
#   bench/gpu_report.sh [PYTHIA_TOKENIZER_JSON] [OUT_DIR]
#
# - bench/bench_step.py, Pythia-160M, bf16, batch 8 / 16 / 32 / 64 x 2048: vanilla tokens/s and MFU (model FLOPs
#   and SSA FLOPs apart), SSA base and weight sharing over vanilla, and the torch peer (HF GPT-NeoX,
#   torch.compile, bf16 autocast, SDPA, fused AdamW) on the same shapes;
# - train.py itself (pythia160m_ssa_ws, batch 32 x 2048, the demo corpus tokenized with the Pythia tokenizer):
#   tokens/s from its metrics.jsonl against bench_step.py's for the same config.
# Prints the table (Markdown, with the device and the date) and keeps every log and JSON under OUT_DIR
# (default runs/gpu_report_<UTC time>). PYTHIA_TOKENIZER_JSON defaults to ../shared/data/tokenizers/pythia/
# tokenizer.json beside the checkout ('demo': the demo BPE). Exits 2, saying why, without a GPU.
#
# Environment: PYTHON (interpreter), TRAIN_STEPS (200; train.py's tokens/s is the median of its log records
# after the first two). For exercising the script on a CPU only (the figures mean nothing there):
# ALLOW_CPU=1 MODEL=tiny SEQ_LEN=64 BATCHES="8 32" TRAIN_STEPS=60 bench/gpu_report.sh demo
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOKENIZER=${1:-$ROOT/../shared/data/tokenizers/pythia/tokenizer.json}
OUT=${2:-$ROOT/runs/gpu_report_$(date -u +%Y%m%d_%H%M%S)}
PY=${PYTHON:-python}
TRAIN_STEPS=${TRAIN_STEPS:-200}
MODEL=${MODEL:-pythia160m}
SEQ_LEN=${SEQ_LEN:-2048}
BATCHES=${BATCHES:-8 16 32 64}
DTYPE=${DTYPE:-bfloat16}
TRAIN_BATCH=32  # the loop runs at this batch and is compared with bench_step.py's at the same batch
cd "$ROOT"

fail() { echo "gpu_report.sh: $*" >&2; exit 2; }
JAX_ON_GPU='import jax, sys; sys.exit(jax.default_backend() != "gpu")'
if [ "${ALLOW_CPU:-0}" != 1 ] && ! "$PY" -c "$JAX_ON_GPU" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    fail "this machine has an NVIDIA GPU but jax does not see it (jax.default_backend() is not 'gpu');" \
         "install jax with CUDA: pip install -c constraints.txt -e '.[cuda]'"
  fi
  fail "no GPU here: jax.default_backend() is not 'gpu' and nvidia-smi finds no NVIDIA GPU." \
       "This report measures a GPU; on a CPU run bench/bench_step.py --model=tiny directly."
fi
TOKENIZER_FLAG=()
if [ "$TOKENIZER" != demo ]; then
  [ -f "$TOKENIZER" ] || fail "the Pythia tokenizer is not at $TOKENIZER (pass its tokenizer.json as argument 1)"
  TOKENIZER_FLAG=(--config.data.tokenizer_path="$TOKENIZER")
fi
mkdir -p "$OUT"

for B in $BATCHES; do
  echo "== bench_step.py $MODEL, batch $B x $SEQ_LEN, $DTYPE, peer torch" >&2
  "$PY" bench/bench_step.py --model="$MODEL" --batch="$B" --seq_len="$SEQ_LEN" --dtype="$DTYPE" --peer=torch \
      --json="$OUT/bench_$B.json" 2>&1 | tee "$OUT/bench_$B.log" >&2 \
    || echo "gpu_report.sh: bench_step.py at batch $B failed; see $OUT/bench_$B.log" >&2
done

echo "== train.py ${MODEL}_ssa_ws, batch $TRAIN_BATCH x $SEQ_LEN, demo corpus, tokenizer $TOKENIZER," \
     "$TRAIN_STEPS steps" >&2
"$PY" train.py --config="configs/${MODEL}_ssa_ws.py" --workdir="$OUT/train" \
    --config.data.demo=True "${TOKENIZER_FLAG[@]}" --config.model.dtype="$DTYPE" \
    --config.train.global_batch_size="$TRAIN_BATCH" --config.train.seq_len="$SEQ_LEN" \
    --config.train.steps="$TRAIN_STEPS" --config.train.warmup_steps=10 --config.train.log_every=20 \
    --config.train.eval_every=0 --config.train.eval_batches=1 --config.train.checkpoint_every=0 \
    --config.train.tensorboard=False --config.eval.at_end=False 2>&1 | tee "$OUT/train.log" >&2 \
  || echo "gpu_report.sh: train.py failed; see $OUT/train.log" >&2

"$PY" - "$OUT" "$MODEL" "$SEQ_LEN" "$DTYPE" "$TRAIN_BATCH" $BATCHES <<'PYEOF'
import json, statistics, sys
from pathlib import Path

out, model, seq, dtype, train_batch = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
batches = [int(b) for b in sys.argv[6:]]
runs = {b: json.loads((out / f"bench_{b}.json").read_text()) for b in batches if (out / f"bench_{b}.json").exists()}
if not runs:
  sys.exit(f"gpu_report.sh: no bench_step.py results under {out}")
first = next(iter(runs.values()))
print(f"Device: {first['device']}; date: {first['date']}; {model}, seq {seq}, {dtype} "
      f"(bench/bench_step.py, fastest step of interleaved rounds; median ratios in parentheses)\n")
print("| batch | vanilla | SSA base / vanilla | SSA weight sharing / vanilla | peer (torch) | vanilla / peer |")
print("|---|---|---|---|---|---|")

def pct(x):
  return "n/a" if x is None else f"{x:.1%}"

def ratio(r):
  if "error" in r:
    return r["error"].split(":")[0]
  return f"{r['vs_vanilla']:.3f}x ({r['vs_vanilla_median']:.3f}x)" if "vs_vanilla" in r else "n/a"

for b in batches:
  if b not in runs:
    print(f"| {b} x {seq} | failed (see bench_{b}.log) | | | | |")
    continue
  v = runs[b]["variants"]
  van = v.get("vanilla", {})
  van_s = (f"{van['tokens_per_s'] / 1e3:.0f}k tok/s, MFU {pct(van['mfu_model'])}" if "tokens_per_s" in van
           else van.get("error", "missing"))
  peer = runs[b].get("peer") or {}
  if "tokens_per_s" in peer:
    peer_s = f"{peer['tokens_per_s'] / 1e3:.0f}k tok/s, MFU {pct(peer.get('mfu_model'))}"
    vs = f"{van['tokens_per_s'] / peer['tokens_per_s']:.2f}x" if "tokens_per_s" in van else "n/a"
  else:
    peer_s, vs = peer.get("skipped") or peer.get("error") or "not run", "n/a"
  print(f"| {b} x {seq} | {van_s} | {ratio(v.get('ssa', {}))} | {ratio(v.get('ssa_ws', {}))} | {peer_s} | {vs} |")

print("\nSSA's own temperature FLOPs as MFU (counted apart from the model's):")
for b, run in runs.items():
  parts = [f"{k} {pct(r.get('mfu_ssa'))}" for k, r in run["variants"].items() if k != "vanilla" and "mfu_ssa" in r]
  print(f"- {b} x {seq}: " + ", ".join(parts))
print("\nFirst step (compile included), seconds: " + "; ".join(
    f"{b}: " + ", ".join(f"{k} {r['first_step_s']:.0f}" for k, r in run["variants"].items() if "first_step_s" in r)
    for b, run in runs.items()))

metrics_file = out / "train" / "metrics.jsonl"
records = [json.loads(l) for l in metrics_file.read_text().splitlines() if l.strip()] if metrics_file.exists() else []
tps = [r["tokens_per_s"] for r in records if "tokens_per_s" in r][2:]  # the first records include compilation
if not tps:
  print(f"\ntrain.py: no tokens_per_s past the first two log records in {metrics_file} (see train.log)")
else:
  loop = statistics.median(tps)
  bench = runs.get(train_batch, {}).get("variants", {}).get("ssa_ws", {}).get("tokens_per_s")
  vs = (f", {loop / bench:.1%} of bench_step.py's {bench / 1e3:.1f}k for {model} ssa_ws at {train_batch} x {seq}"
        if bench else f" (no bench_step.py figure at batch {train_batch} to compare)")
  print(f"\ntrain.py ({model}_ssa_ws, {train_batch} x {seq}, demo corpus): {loop / 1e3:.1f}k tok/s "
        f"(median of {len(tps)} log records){vs}")
PYEOF

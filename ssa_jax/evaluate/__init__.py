"""Zero-shot evaluation with lm-evaluation-harness semantics, passkey retrieval, results JSON (see eval.py)."""

from ssa_jax.evaluate.loading import ModelSource, check_vocab, load_model
from ssa_jax.evaluate.runner import run_eval

__all__ = ["ModelSource", "check_vocab", "load_model", "run_eval"]

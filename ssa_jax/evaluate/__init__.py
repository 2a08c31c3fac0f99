"""Zero-shot evaluation with lm-evaluation-harness semantics, passkey retrieval, results JSON (see eval.py)."""

from ssa_jax.evaluate.loading import ModelSource, load_model
from ssa_jax.evaluate.runner import run_eval
from ssa_jax.formats.tokenizer_files import check_vocab

__all__ = ["ModelSource", "check_vocab", "load_model", "run_eval"]

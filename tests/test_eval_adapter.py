"""The lm-eval model `ssa_jax` runs lm-eval's tasks and gives lm-eval's `hf` numbers on the same model."""

from __future__ import annotations

import math

from eval_reference import run_lm_eval, write_task_files, write_yamls
from hf_models import make_hf_model
from tests_shared import shared_data_or_skip


def test_lm_eval_with_ssa_jax_model_matches_hf_model(tmp_path):
  shared = shared_data_or_skip()
  import lm_eval
  from lm_eval.tasks import TaskManager
  from transformers import GPT2TokenizerFast

  import ssa_jax.evaluate.lm_eval_adapter  # noqa: F401  (registers the model)

  model_dir = tmp_path / "model"
  make_hf_model("gpt2", model_dir, vocab_size=50257, n_embd=32, n_head=4, n_layer=1, n_positions=64)
  GPT2TokenizerFast(tokenizer_file=str(shared / "tokenizers" / "gpt2" / "tokenizer.json"),
                    bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(str(model_dir))
  write_task_files(tmp_path / "data", shared, n=6)
  names = write_yamls(tmp_path / "yamls", tmp_path / "data", ["piqa", "lambada_openai", "wikitext"])
  reference = run_lm_eval(model_dir, tmp_path / "yamls", names, 6, 64)
  ours = lm_eval.simple_evaluate(model="ssa_jax", model_args=f"hf_dir={model_dir},batch_size=8,max_length=64",
                                 tasks=names, limit=6, task_manager=TaskManager(include_path=str(tmp_path / "yamls")))
  for task in names:
    for key, ref in reference["results"][task].items():
      if key.endswith(",none") and not isinstance(ref, str):
        assert math.isclose(ours["results"][task][key], ref, rel_tol=1e-4, abs_tol=1e-12), (task, key)

  lm = ssa_jax.evaluate.lm_eval_adapter.SSAJaxLM(hf_dir=str(model_dir), max_length=64)
  from lm_eval.api.instance import Instance

  (text,) = lm.generate_until([Instance("generate_until", {}, ("The sky is", {"until": ["\n"], "max_gen_toks": 5}), 0)])
  assert isinstance(text, str) and "\n" not in text

"""Evaluation pieces against lm-eval's own functions: rolling windows, WikiText, bootstrap, bad input, passkey."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from hf_models import make_hf_model
from tests_shared import ShiftedByteTokenizer, shared_data_or_skip

from ssa_jax.evaluate import metrics, readers, requests, tasks, wikitext


def test_rolling_windows_equal_lm_eval_windows_for_every_length():
  from lm_eval import utils

  rng = random.Random(0)
  for max_length in (1, 2, 5, 16):
    for n in (1, 2, 4, 5, 6, 15, 16, 17, 33, 80):
      tokens = [rng.randrange(1000) for _ in range(n)]
      ref = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(tokens, 999, max_length, 1)))
      assert requests.rolling_windows(tokens, 999, max_length) == ref, (max_length, n)
      # Every token is predicted exactly once.
      assert [t for _, cont in ref for t in cont] == tokens


def test_long_documents_rolling_loglikelihood_equals_lm_eval(tmp_path):
  """Documents several times longer than max_length: same total log-likelihood as lm-eval's hf model."""
  shared = shared_data_or_skip()
  from lm_eval.api.instance import Instance
  from lm_eval.models.huggingface import HFLM
  from transformers import GPT2TokenizerFast

  from ssa_jax.data.tokenizer import load_tokenizer
  from ssa_jax.evaluate.scoring import Scorer
  from ssa_jax.formats.hf import from_hf

  make_hf_model("gpt2", tmp_path, vocab_size=50257, n_embd=32, n_head=4, n_layer=2, n_positions=64)
  GPT2TokenizerFast(tokenizer_file=str(shared / "tokenizers" / "gpt2" / "tokenizer.json"),
                    bos_token="<|endoftext|>", eos_token="<|endoftext|>").save_pretrained(str(tmp_path))
  texts = [json.loads(line)["text"] for line in
           (shared / "benchmarks" / "lambada_openai_test.jsonl").read_text().splitlines()[:3]]
  lm = HFLM(pretrained=str(tmp_path), max_length=16, dtype="float32", device="cpu", batch_size=4)
  tok = load_tokenizer(str(tmp_path))
  model, params = from_hf(tmp_path)
  scorer = Scorer(model, params, max_length=16, batch_size=4, show_progress=False)
  for text in texts:
    assert len(tok.encode(text)) > 3 * 16
    (ref,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (text,), 0)], disable_tqdm=True)
    reqs = requests.rolling_requests(tok, [text], 16)
    ll, _ = scorer.score(reqs)
    assert len(reqs) >= 4
    np.testing.assert_allclose(ll.sum(), ref, rtol=1e-5)


def test_wikitext_detokenizer_is_lm_eval_s():
  from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

  samples = [
      " = Valkyria = \n \n The game 's 3 @,@ 000 @-@ seat arena ( opened in 1 @.@ 5 ) ; \" a \" , ' b ' : c ! d ? \n",
      " = = = Plot = = = \n It was 5 ° C . [ note ] { x } N 's s ' /' 1/ \n = = = = deep = = = = ",
      "no change here",
  ]
  for s in samples:
    assert wikitext.detokenize(s) == wikitext_detokenizer({"page": s})


def test_wikitext_pages_split_on_titles_only():
  lines = [" ", " = A = ", " ", " text a ", " = = Section = = ", " more a ", " = B = ", " b ", ""]
  pages = wikitext.split_pages("\n".join(lines))
  assert pages == ["\n".join(lines[1:6]), "\n".join(lines[6:])]
  doc = tasks.build_wikitext({"page": pages[0]})
  # lm-eval splits on runs of white space, so the page's leading and trailing space each add an empty word.
  assert doc.words == len(pages[0].split()) + 2 and doc.bytes == len(pages[0].encode())


def test_hellaswag_docs_equal_lm_eval_process_docs():
  import datasets
  from lm_eval.tasks.hellaswag.utils import process_docs
  from eval_reference import HELLASWAG

  ref = process_docs(datasets.Dataset.from_list(HELLASWAG))
  for record, expected in zip(HELLASWAG, ref):
    doc = tasks.build_hellaswag(record)
    assert doc.pairs[0][0] == expected["query"]
    assert list(doc.choices) == expected["choices"] and doc.gold == expected["gold"]


def test_bootstrap_stderr_draws_lm_eval_s_resamples(monkeypatch):
  from lm_eval.api import metrics as lm_metrics

  monkeypatch.setenv("DISABLE_MULTIPROC", "1")
  lls = list(np.random.RandomState(1).randn(37) * 2 - 6)
  ref = lm_metrics.bootstrap_stderr(lm_metrics.perplexity, lls, iters=2000)
  assert metrics.bootstrap_perplexity_stderr(lls, iters=2000) == pytest.approx(ref, rel=1e-9)
  assert metrics.mean_stderr([1.0, 0.0, 1.0]) == pytest.approx(lm_metrics.mean_stderr([1.0, 0.0, 1.0]))
  assert metrics.mean_stderr([1.0]) == "N/A"


def test_malformed_lines_are_reported_with_file_and_line_and_skipped(tmp_path, caplog):
  good = {"goal": "g", "sol1": "a", "sol2": "b", "label": 1}
  lines = [json.dumps(good), "{not json", json.dumps({"goal": "g", "sol1": "a", "label": 0}), "",
           json.dumps([1, 2]), json.dumps({**good, "label": "x"}), json.dumps(good)]
  (tmp_path / "piqa_validation.jsonl").write_text("\n".join(lines) + "\n")
  read = readers.read_task(tasks.TASKS["piqa"], str(tmp_path))
  assert len(read.docs) == 2 and read.original == 2
  path = str(tmp_path / "piqa_validation.jsonl")
  assert [s.split(": ")[0] for s in read.skipped] == [f"{path}:{i}" for i in (2, 3, 5, 6)]
  assert "missing field 'sol2'" in read.skipped[1]
  assert any(f"{path}:2" in r.message for r in caplog.records)
  wino = tmp_path / "winogrande_xl_validation.jsonl"
  wino.write_text(json.dumps({"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}) + "\n")
  (bad,) = readers.read_task(tasks.TASKS["winogrande"], str(tmp_path)).skipped
  assert bad.startswith(f"{wino}:1: ValueError")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  from ssa_jax.formats.hf import from_hf

  d = tmp_path_factory.mktemp("tiny")
  make_hf_model("llama", d, vocab_size=300, max_position_embeddings=128)
  return from_hf(d)


def test_missing_task_file_is_reported_and_the_others_run(tiny, tmp_path, capsys):
  from ssa_jax.evaluate import run_eval

  model, params = tiny
  (tmp_path / "lambada_openai_test.jsonl").write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
  out = run_eval(model, params, ShiftedByteTokenizer(), "piqa,lambada_openai", data_dir=str(tmp_path), batch_size=2,
                 max_length=32, output=str(tmp_path / "r.json"), show_progress=False)
  assert "lambada_openai" in out["results"] and "piqa" not in out["results"]
  assert "piqa_validation.jsonl" in out["ssa_jax"]["missing_tasks"]["piqa"]
  assert "SKIPPED task piqa" in capsys.readouterr().out
  assert json.loads((tmp_path / "r.json").read_text())["results"]["lambada_openai"]["acc,none"] in (0.0, 1.0)


def test_document_whose_choice_exceeds_max_length_is_left_out_and_reported(tiny, tmp_path, capsys):
  from ssa_jax.evaluate import run_eval

  model, params = tiny
  docs = [{"goal": "Open a jar", "sol1": "twist the lid", "sol2": "x" * 40, "label": 0},
          {"goal": "Dry a towel", "sol1": "hang it", "sol2": "soak it", "label": 0},
          {"goal": "Cut bread", "sol1": "use a knife", "sol2": "use a spoon", "label": 0}]
  (tmp_path / "piqa_validation.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
  out = run_eval(model, params, ShiftedByteTokenizer(), "piqa", data_dir=str(tmp_path), batch_size=2, max_length=32,
                 show_progress=False)
  assert out["n-samples"]["piqa"] == {"original": 3, "effective": 2}
  assert out["ssa_jax"]["skipped_records"]["piqa"]["count"] == 1
  assert "document 0" in out["ssa_jax"]["skipped_records"]["piqa"]["records"][0]
  assert "1 document(s) left out" in capsys.readouterr().out


def test_tokenizer_that_does_not_match_the_vocabulary_fails_at_once(tiny, tmp_path):
  from ssa_jax.evaluate import check_vocab, run_eval

  model, params = tiny
  big = ShiftedByteTokenizer()
  big.vocab_size = 301
  with pytest.raises(ValueError, match="301 tokens but the model's vocabulary has only 300"):
    run_eval(model, params, big, "piqa", data_dir=str(tmp_path))
  small = ShiftedByteTokenizer()
  small.vocab_size = 10
  with pytest.raises(ValueError, match="not the model's tokenizer"):
    check_vocab(small, 32000)
  with pytest.raises(ValueError, match="unknown task"):
    run_eval(model, params, ShiftedByteTokenizer(), "piqa,nope", data_dir=str(tmp_path))


def test_directory_that_is_not_a_checkpoint_fails_at_once(tmp_path):
  from ssa_jax.formats.checkpoint import NotACheckpointError
  from ssa_jax.evaluate import ModelSource, load_model

  (tmp_path / "junk.txt").write_text("x")
  with pytest.raises(NotACheckpointError, match="not an ssa-jax checkpoint"):
    load_model(ModelSource(checkpoint=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_model(ModelSource(hf_dir=str(tmp_path)))
  with pytest.raises(ValueError, match="exactly one model source"):
    load_model(ModelSource())


def test_greedy_generation_with_cache_equals_argmax_of_full_forward(tiny):
  import jax.numpy as jnp

  from ssa_jax.evaluate.generate import generate

  model, params = tiny
  prompts = [[5, 9, 13, 200, 7], [11, 3, 4, 4, 8], [1, 2, 3]]
  out = generate(model, params, prompts, max_new_tokens=6)
  for prompt, gen in zip(prompts, out):
    # One causal forward over prompt + generation: each generated token is the argmax after its prefix.
    logits = model.apply(params, jnp.asarray([list(prompt) + gen], jnp.int32))
    assert len(gen) == 6 and gen == [int(t) for t in jnp.argmax(logits[0, len(prompt) - 1:-1], axis=-1)]


def test_passkey_prompts_are_seeded_and_fit_their_lengths(tiny):
  from ssa_jax.evaluate.config import passkey_config
  from ssa_jax.evaluate.passkey import evaluate_passkey, make_trials

  cfg = passkey_config()
  cfg.lengths, cfg.trials = (300, 600), 4
  tok = ShiftedByteTokenizer()
  a, b = make_trials(cfg, tok), make_trials(cfg, tok)
  assert a == b and len(a) == 8
  cfg2 = passkey_config()
  cfg2.lengths, cfg2.trials, cfg2.seed = (300, 600), 4, 1
  assert [t.key for t in make_trials(cfg2, tok)] != [t.key for t in a]
  for t in a:
    assert cfg.key_sentence.format(key=t.key) in t.prompt and len(t.key) == 5
    assert len(tok.encode(t.prompt)) <= t.length and t.prompt.endswith(cfg.question)
  assert len(tok.encode(a[-1].prompt)) > 600 - len(tok.encode(" " + cfg.filler))
  model, params = tiny
  cfg.lengths, cfg.trials, cfg.max_new_tokens = (300,), 3, 4  # past the 128 positions: RoPE runs on
  out = evaluate_passkey(model, params, tok, cfg)
  assert out["n"] == 3 and set(out["by_length"]) == {"300"} and 0.0 <= out["acc"] <= 1.0
  assert sum(v is not None for v in out["by_depth"].values()) >= 1


def test_passkey_each_length_draws_from_its_own_stream():
  """Adding, removing or reordering lengths leaves every other length's prompts exactly as they were."""
  from ssa_jax.evaluate.config import passkey_config
  from ssa_jax.evaluate.passkey import make_trials

  tok = ShiftedByteTokenizer()

  def trials(lengths):
    cfg = passkey_config()
    cfg.lengths, cfg.trials = lengths, 5
    return make_trials(cfg, tok)

  alone = trials((300,))
  assert [t for t in trials((300, 600)) if t.length == 300] == alone
  assert [t for t in trials((900, 300)) if t.length == 300] == alone
  assert [t for t in trials((300, 600)) if t.length == 600] == trials((600,))
  # Different lengths are different streams, not one stream restarted.
  assert [t.key for t in alone] != [t.key for t in trials((600,))]


def test_passkey_depth_is_where_the_key_was_placed():
  from ssa_jax.evaluate.config import passkey_config
  from ssa_jax.evaluate.passkey import make_trials

  cfg = passkey_config()
  cfg.lengths, cfg.trials = (520, 1200), 12  # ShiftedByteTokenizer: 243 tokens without filler, 90 per filler
  for t in make_trials(cfg, ShiftedByteTokenizer()):
    key_at = t.prompt.index(cfg.key_sentence.format(key=t.key))
    before, after = t.prompt[:key_at].count(cfg.filler), t.prompt[key_at:].count(cfg.filler)
    assert t.depth == (before / (before + after) if before + after else 0.0)
  # At 520 tokens there are 3 fillers: the placed depth is a multiple of 1/3, whatever was drawn.
  short = [t for t in make_trials(cfg, ShiftedByteTokenizer()) if t.length == 520]
  assert {t.prompt.count(cfg.filler) for t in short} == {3}
  assert {round(t.depth * 3, 9) for t in short} <= {0.0, 1.0, 2.0, 3.0}


def test_passkey_hit_is_the_first_integer_of_the_output():
  from ssa_jax.evaluate.passkey import is_hit

  assert not is_hit("1234", "123")
  assert is_hit("123 abc", "123")
  assert is_hit(" the key is 123.", "123")
  assert not is_hit("0123", "123")
  assert not is_hit("99 then 123", "123")  # the first integer decides
  assert not is_hit("no digits", "123")
  assert is_hit("12345\nThe pass key is 12345", "12345")


@pytest.fixture(scope="module")
def tiny_gpt2():
  """A 512-position GPT-2 (learned positions) with a vocabulary that covers ShiftedByteTokenizer."""
  import dataclasses

  import jax

  from tiny_models import tiny_config
  from ssa_jax.model.decoder import Decoder
  from ssa_jax.model.params import init_variables

  cfg = dataclasses.replace(tiny_config("gpt2", max_seq_len=512), vocab_size=300).validate()
  return Decoder(cfg), init_variables(cfg, jax.random.PRNGKey(0))


def _passkey_cfg(lengths, trials=2):
  from ssa_jax.evaluate.config import passkey_config

  cfg = passkey_config()
  cfg.lengths, cfg.trials, cfg.max_new_tokens = lengths, trials, 8
  return cfg


def test_passkey_length_past_the_position_table_is_skipped_and_reported(tiny_gpt2, capsys):
  from ssa_jax.evaluate import run_eval
  from ssa_jax.evaluate.results import summary_table

  model, params = tiny_gpt2
  # 400 + 8 new tokens fit 512 positions; 512 + 8 do not (the prompt alone would); 200 is shorter than the
  # passkey prompt without filler (243 ShiftedByteTokenizer tokens).
  cfg = _passkey_cfg((512, 200, 400))
  out = run_eval(model, params, ShiftedByteTokenizer(), "passkey", passkey=cfg, show_progress=False)
  console = capsys.readouterr().out
  why = out["passkey"]["skipped_lengths"]["512"]
  assert "512 tokens + 8 new tokens" in why and "512 learned positions" in why
  assert "without any filler (243 tokens)" in out["passkey"]["skipped_lengths"]["200"]
  assert set(out["passkey"]["by_length"]) == {"400"} and out["results"]["passkey"]["sample_len"] == 2
  assert f"SKIPPED {why}" in console
  table = summary_table(out)
  assert "| passkey | acc@512" in table and "(skipped)" in table and why in table
  assert "acc@400" in table


def test_passkey_with_every_length_skipped_reports_instead_of_crashing(tiny_gpt2, capsys):
  from ssa_jax.evaluate import run_eval

  model, params = tiny_gpt2
  out = run_eval(model, params, ShiftedByteTokenizer(), "passkey", passkey=_passkey_cfg((512, 1024)), show_progress=False)
  console = capsys.readouterr().out
  assert out["results"] == {} and "every length was skipped" in out["ssa_jax"]["missing_tasks"]["passkey"]
  assert set(out["passkey"]["skipped_lengths"]) == {"512", "1024"}
  assert "not run: passkey: every length was skipped" in console and "SKIPPED passkey length 512" in console


def test_summary_table_prints_whole_reasons(tiny, tmp_path, capsys):
  from ssa_jax.evaluate import run_eval

  model, params = tiny
  deep = tmp_path / ("a_long_directory_name_" * 4) / "benchmarks"
  deep.mkdir(parents=True)
  (deep / "lambada_openai_test.jsonl").write_text(json.dumps({"text": "the cat sat on the mat"}) + "\n")
  out = run_eval(model, params, ShiftedByteTokenizer(), "lambada_openai,lambada_standard", data_dir=str(deep),
                 batch_size=2, max_length=32, show_progress=False)
  table = capsys.readouterr().out
  message = out["ssa_jax"]["missing_tasks"]["lambada_standard"]
  assert str(deep / "lambada_standard_test.jsonl") in message and f"not run: {message}" in table
  assert "| lambada_standard | (not run) " in table


def test_negative_limit_fails_in_run_eval(tiny, tmp_path):
  from ssa_jax.evaluate import run_eval

  model, params = tiny
  with pytest.raises(ValueError, match="limit: expected an int >= 0"):
    run_eval(model, params, ShiftedByteTokenizer(), "piqa", data_dir=str(tmp_path), limit=-1)

"""The zero-shot tasks: their files, lm-eval prompt construction per document, metrics and versions.

Every builder turns one record of the task file into a `Doc` exactly as lm-eval's task YAML does
(`doc_to_text` / `doc_to_choice` / `doc_to_target`, target delimiter " "); a record that lacks a field or
has the wrong type raises KeyError / ValueError / TypeError / IndexError, which the reader reports with its
file and line and skips.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

from ssa_jax.evaluate import wikitext

MULTIPLE_CHOICE, LOGLIKELIHOOD, ROLLING = "multiple_choice", "loglikelihood", "loglikelihood_rolling"


@dataclasses.dataclass(frozen=True)
class Doc:
  """One evaluation document: its (context, continuation) requests, or the text scored by rolling windows."""

  pairs: tuple[tuple[str, str], ...] = ()
  gold: int = -1  # multiple choice: index of the right request
  choices: tuple[str, ...] = ()  # multiple choice: the choice texts (acc_norm divides by their lengths)
  text: str = ""  # rolling: the detokenized page
  words: int = 0  # rolling: words / bytes of the page before detokenization
  bytes: int = 0


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A task: the file under --data_dir, how its records become Docs, and what it reports."""

  name: str
  filename: str
  output_type: str
  metrics: tuple[str, ...]
  build: Callable[[dict[str, Any]], Doc]
  version: float = 1.0
  file_format: str = "jsonl"  # 'jsonl' or 'wikitext_raw'
  hf_dataset: str = ""  # the Hugging Face original, recorded in the results' configs
  split: str = "test"
  prompt: str = ""  # lm-eval's doc_to_text, for the record


def _require_str(record: dict, field: str) -> str:
  value = record[field]
  if not isinstance(value, str):
    raise TypeError(f"field {field!r}: expected a string, got {type(value).__name__}")
  return value


def _multiple_choice(context: str, choices: list[str], gold: int) -> Doc:
  if not 0 <= gold < len(choices):
    raise ValueError(f"gold index {gold} outside the {len(choices)} choices")
  return Doc(pairs=tuple((context, " " + c) for c in choices), gold=gold, choices=tuple(choices))


def build_arc(record: dict) -> Doc:
  """ARC: "Question: {question}\\nAnswer:" -> " " + choices.text[i]; gold = choices.label.index(answerKey)."""
  choices = record["choices"]
  texts, labels = list(choices["text"]), list(choices["label"])
  if not all(isinstance(t, str) for t in texts):
    raise TypeError("field 'choices.text': expected strings")
  return _multiple_choice(f"Question: {_require_str(record, 'question')}\nAnswer:", texts,
                          labels.index(record["answerKey"]))


def build_piqa(record: dict) -> Doc:
  """PIQA: "Question: {goal}\\nAnswer:" -> [sol1, sol2]; gold = label."""
  label = record["label"]
  if isinstance(label, bool) or not isinstance(label, int):
    raise TypeError(f"field 'label': expected 0 or 1, got {label!r}")
  return _multiple_choice(f"Question: {_require_str(record, 'goal')}\nAnswer:",
                          [_require_str(record, "sol1"), _require_str(record, "sol2")], label)


def hellaswag_preprocess(text: str) -> str:
  """lm-eval's hellaswag `preprocess` (WikiHow bracket artifacts removed)."""
  text = text.strip()
  text = text.replace(" [title]", ". ")
  text = re.sub("\\[.*?\\]", "", text)
  text = text.replace("  ", " ")
  return text


def build_hellaswag(record: dict) -> Doc:
  """HellaSwag: preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize()) -> preprocess(ending)."""
  ctx = _require_str(record, "ctx_a") + " " + _require_str(record, "ctx_b").capitalize()
  query = hellaswag_preprocess(_require_str(record, "activity_label") + ": " + ctx)
  endings = record["endings"]
  if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
    raise TypeError("field 'endings': expected a list of strings")
  return _multiple_choice(query, [hellaswag_preprocess(e) for e in endings], int(record["label"]))


def build_winogrande(record: dict) -> Doc:
  """Winogrande: two contexts sentence[:i] + option, one shared continuation " " + sentence[i+1:].strip()."""
  sentence = _require_str(record, "sentence")
  i = sentence.index("_")  # ValueError when the blank is missing
  contexts = [sentence[:i] + _require_str(record, "option1"), sentence[:i] + _require_str(record, "option2")]
  gold = {"1": 0, "2": 1}[str(record["answer"])]
  target = " " + sentence[i + 1:].strip()
  return Doc(pairs=tuple((c, target) for c in contexts), gold=gold, choices=tuple(contexts))


def build_lambada(record: dict) -> Doc:
  """LAMBADA: context = all but the last space-separated piece, target = " " + the last piece."""
  pieces = _require_str(record, "text").split(" ")
  return Doc(pairs=((" ".join(pieces[:-1]), " " + pieces[-1]),))


def build_wikitext(record: dict) -> Doc:
  """WikiText page (record {'page': ...}): rolling log-likelihood of the detokenized page."""
  page = _require_str(record, "page")
  return Doc(text=wikitext.detokenize(page), words=len(re.split(r"\s+", page)), bytes=len(page.encode("utf-8")))


_MC = ("acc", "acc_norm")
_LL = ("perplexity", "acc")
TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("arc_easy", "arc_easy_test.jsonl", MULTIPLE_CHOICE, _MC, build_arc,
                 hf_dataset="allenai/ai2_arc ARC-Easy", prompt="Question: {{question}}\nAnswer:"),
        TaskSpec("arc_challenge", "arc_challenge_test.jsonl", MULTIPLE_CHOICE, _MC, build_arc,
                 hf_dataset="allenai/ai2_arc ARC-Challenge", prompt="Question: {{question}}\nAnswer:"),
        TaskSpec("piqa", "piqa_validation.jsonl", MULTIPLE_CHOICE, _MC, build_piqa, hf_dataset="piqa",
                 split="validation", prompt="Question: {{goal}}\nAnswer:"),
        TaskSpec("hellaswag", "hellaswag_validation.jsonl", MULTIPLE_CHOICE, _MC, build_hellaswag,
                 hf_dataset="Rowan/hellaswag", split="validation", prompt="{{query}}"),
        TaskSpec("winogrande", "winogrande_xl_validation.jsonl", MULTIPLE_CHOICE, ("acc",), build_winogrande,
                 hf_dataset="allenai/winogrande winogrande_xl", split="validation",
                 prompt="sentence[:sentence.index('_')] + option"),
        TaskSpec("lambada_openai", "lambada_openai_test.jsonl", LOGLIKELIHOOD, _LL, build_lambada,
                 hf_dataset="EleutherAI/lambada_openai", prompt="{{text.split(' ')[:-1]|join(' ')}}"),
        TaskSpec("lambada_standard", "lambada_standard_test.jsonl", LOGLIKELIHOOD, _LL, build_lambada,
                 hf_dataset="cimec/lambada", prompt="{{text.split(' ')[:-1]|join(' ')}}"),
        TaskSpec("wikitext", "wikitext-2-raw/wiki.test.raw", ROLLING,
                 ("word_perplexity", "byte_perplexity", "bits_per_byte"), build_wikitext, version=2.0,
                 file_format="wikitext_raw", hf_dataset="EleutherAI/wikitext_document_level wikitext-2-raw-v1"),
    )
}
PASSKEY = "passkey"


def parse_task_names(tasks: str | list[str] | tuple[str, ...]) -> list[str]:
  """Task names from 'a,b,c' or a list; unknown names raise ValueError listing the known ones."""
  names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
  unknown = [t for t in names if t not in TASKS and t != PASSKEY]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}; known: {sorted(TASKS) + [PASSKEY]}")
  return list(dict.fromkeys(names))

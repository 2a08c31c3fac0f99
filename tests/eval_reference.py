"""Test helpers for the evaluation parity tests: task files, lm-eval task YAMLs, and lm-eval's own run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lm_eval

LM_EVAL_TASKS = Path(lm_eval.__file__).parent / "tasks"

# Our task -> (lm-eval's own YAML to include, the split our file stands for, our file name).
BUILTIN = {
    "arc_easy": ("arc/arc_easy.yaml", "test", "arc_easy_test.jsonl"),
    "arc_challenge": ("arc/arc_easy.yaml", "test", "arc_challenge_test.jsonl"),
    "piqa": ("piqa/piqa.yaml", "validation", "piqa_validation.jsonl"),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", "hellaswag_validation.jsonl"),
    "winogrande": ("winogrande/default.yaml", "validation", "winogrande_xl_validation.jsonl"),
    "lambada_openai": ("lambada/lambada_openai.yaml", "test", "lambada_openai_test.jsonl"),
    "lambada_standard": ("lambada/lambada_standard.yaml", "test", "lambada_standard_test.jsonl"),
    "wikitext": ("wikitext/wikitext.yaml", "test", "wikitext_pages.jsonl"),
}

HELLASWAG = [
    {"activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
     "ctx_b": "then", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."], "label": "3"},
    {"activity_label": "Home and Garden", "ctx_a": "[header] How to grow tomatoes [title] Pick a sunny spot.", "ctx_b": "Tomatoes need at least six hours of sun.",
     "endings": ["[step] Water them  daily [title] and keep the soil moist.", "Plant them in the shade.", "[substeps] Buy seeds from a store.", "Paint the fence blue."], "label": "0"},
    {"activity_label": "Playing guitar", "ctx_a": "A boy sits on a bed holding a guitar.", "ctx_b": "HE strums the strings",
     "endings": ["and sings a song.", "and then throws it.", "while eating a sandwich.", "then the dog barks."], "label": "1"},
    {"activity_label": "Personal Care and Style", "ctx_a": "[title] How to braid hair [step] Brush the hair.", "ctx_b": "",
     "endings": ["[title] Split into three strands.", "Cut it short.", "Dye it green [title] today.", "Wash the car."], "label": "2"},
]


def wikitext_pages() -> list[list[str]]:
  """Three pages as lines of wiki.test.raw (title, blank, paragraphs, section titles), each over 64 tokens.

  No two windows repeat: lm-eval's request grouping mis-assigns results of identical rolling windows.
  """
  words = ("stadium team match critics river poet dynasty storm season harbour army bridge novel choir").split()

  def para(seed: int, n: int) -> str:
    out = []
    for i in range(n):
      w = words[(seed * 7 + i * 3) % len(words)]
      out.append(f" The {w} 's part {seed}.{i} held a {seed + i} @,@ 0{i}0 @-@ seat {w} ( once , in quarter {i} ) ;"
                 f" \" the best {w} \" said so . It was {seed * 31 + i} ° C .")
    return "".join(out) + " "

  pages = []
  for k, title in enumerate(("Robert Boulter", "Du Fu", "Tropical Storm Ana")):
    pages.append([f" = {title} = ", " ", para(10 * k + 1, 4), " ", " = = Career = = ", " ", para(10 * k + 2, 3),
                  " ", " = = = Later years = = = ", " ", para(10 * k + 3, 2), " "])
  return pages


def write_task_files(data_dir: Path, shared: Path, n: int) -> None:
  """Our --data_dir: slices of the shared benchmark files, plus hellaswag / lambada_standard / wikitext."""
  data_dir.mkdir(parents=True, exist_ok=True)
  bench = shared / "benchmarks"
  for name in ("piqa_validation", "arc_easy_test", "arc_challenge_test", "winogrande_xl_validation",
               "lambada_openai_test"):
    lines = (bench / f"{name}.jsonl").read_text().splitlines()[:n]
    (data_dir / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
  lambada = (bench / "lambada_openai_test.jsonl").read_text().splitlines()[100:100 + n]
  (data_dir / "lambada_standard_test.jsonl").write_text("\n".join(lambada) + "\n")
  (data_dir / "hellaswag_validation.jsonl").write_text("\n".join(json.dumps(r) for r in HELLASWAG) + "\n")
  pages = wikitext_pages()
  pages[-1].append("")  # the file ends with a newline: split("\n") leaves an empty last line on the last page
  (data_dir / "wikitext-2-raw").mkdir(exist_ok=True)
  (data_dir / "wikitext-2-raw" / "wiki.test.raw").write_text("\n".join(line for p in pages for line in p))
  # What EleutherAI/wikitext_document_level holds for that file: one record per page.
  (data_dir / "wikitext_pages.jsonl").write_text(
      "\n".join(json.dumps({"page": "\n".join(p)}) for p in pages) + "\n")


def write_yamls(yaml_dir: Path, data_dir: Path, tasks: list[str]) -> list[str]:
  """lm-eval task YAMLs `ssa_<task>`: lm-eval's own task, reading our local file. Returns the task names."""
  yaml_dir.mkdir(parents=True, exist_ok=True)
  names = []
  for task in tasks:
    builtin, split, filename = BUILTIN[task]
    other = {"test": "validation", "validation": "test"}[split]
    (yaml_dir / f"ssa_{task}.yaml").write_text(
        f"include: {LM_EVAL_TASKS / builtin}\n"
        f"task: ssa_{task}\n"
        "tag: []\n"
        "dataset_path: json\n"
        "dataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    {split}: {data_dir / filename}\n"
        "training_split: null\n"
        f"{other}_split: null\n"
        f"{split}_split: {split}\n")
    names.append(f"ssa_{task}")
  return names


def run_lm_eval(model_dir: Path, yaml_dir: Path, task_names: list[str], limit: int, max_length: int,
                extra_args: str = "") -> dict:
  """lm-eval's `hf` model on the local YAMLs (offline), returning its results dict."""
  os.environ["HF_DATASETS_OFFLINE"] = "1"
  os.environ["HF_HUB_OFFLINE"] = "1"
  from lm_eval.tasks import TaskManager

  return lm_eval.simple_evaluate(
      model="hf", model_args=f"pretrained={model_dir},max_length={max_length},dtype=float32{extra_args}",
      tasks=task_names, limit=limit, batch_size=8, device="cpu",
      task_manager=TaskManager(include_path=str(yaml_dir)))

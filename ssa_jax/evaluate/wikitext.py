"""WikiText-2 at document level, as lm-eval reads it: page splitting of wiki.test.raw and its detokenizer."""

from __future__ import annotations

import re


def split_pages(raw: str) -> list[str]:
  """The pages of a wiki.*.raw file (EleutherAI/wikitext_document_level): each starts at a title line."""
  pages, lines = [], []
  for line in raw.split("\n"):
    # A top-level title line (' = Title = ') starts a page; section titles (' = = Section = = ') do not.
    title = line.replace("= = =", "===").replace("= =", "==").strip()
    if title.startswith("= ") and title.endswith(" =") and lines:
      pages.append("\n".join(lines))
      lines = []
    lines.append(line)
  if lines:
    pages.append("\n".join(lines))
  return [p for p in pages if p.strip()]


# lm-eval's `wikitext_detokenizer`, its replacements in file order (each one sees the previous one's output).
_DETOKENIZE_STEPS: tuple[tuple[str, str, str], ...] = (
    # contractions
    ("str", "s '", "s'"),
    ("re", r"/' [0-9]/", r"/'[0-9]/"),
    # number separators
    ("str", " @-@ ", "-"),
    ("str", " @,@ ", ","),
    ("str", " @.@ ", "."),
    # punctuation
    ("str", " : ", ": "),
    ("str", " ; ", "; "),
    ("str", " . ", ". "),
    ("str", " ! ", "! "),
    ("str", " ? ", "? "),
    ("str", " , ", ", "),
    # double brackets
    ("re", r"\(\s*([^\)]*?)\s*\)", r"(\1)"),
    ("re", r"\[\s*([^\]]*?)\s*\]", r"[\1]"),
    ("re", r"{\s*([^}]*?)\s*}", r"{\1}"),
    ("re", r"\"\s*([^\"]*?)\s*\"", r'"\1"'),
    ("re", r"'\s*([^']*?)\s*'", r"'\1'"),
    # miscellaneous
    ("str", "= = = =", "===="),
    ("str", "= = =", "==="),
    ("str", "= =", "=="),
    ("str", " " + chr(176) + " ", chr(176)),
    ("str", " \n", "\n"),
    ("str", "\n ", "\n"),
    ("str", " N ", " 1 "),
    ("str", " 's", "'s"),
)


def detokenize(page: str) -> str:
  """lm-eval's wikitext_detokenizer applied to one page."""
  for kind, pattern, replacement in _DETOKENIZE_STEPS:
    page = page.replace(pattern, replacement) if kind == "str" else re.sub(pattern, replacement, page)
  return page

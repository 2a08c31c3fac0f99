"""constraints.txt (the versions .ci/run and the README install) pins every package pyproject.toml names, exactly,
at a version pyproject.toml allows. Whether the pins resolve together is what .ci/run's install checks."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PINNED_EXTRAS = ("test", "cuda", "tpu", "wandb")  # 'gcs' is not part of the test install, so it has no pins


def pins(text: str) -> dict[str, Version]:
  """{canonical name: version} of a constraints file; every line that is not a comment must be `name==version`."""
  out: dict[str, Version] = {}
  for number, line in enumerate(text.splitlines(), start=1):
    line = line.strip()
    if not line or line.startswith("#"):
      continue
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;,]+)", line)
    assert match, f"constraints.txt:{number}: expected name==version, got {line!r}"
    name = canonicalize_name(match.group(1))
    assert name not in out, f"constraints.txt:{number}: {name} pinned twice"
    out[name] = Version(match.group(2))
  return out


def requirements() -> list[Requirement]:
  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  extras = project["optional-dependencies"]
  return [Requirement(r) for r in [*project["dependencies"], *(r for e in PINNED_EXTRAS for r in extras[e])]]


def test_every_line_is_an_exact_pin_without_a_local_label():
  found = pins((ROOT / "constraints.txt").read_text())
  assert len(found) > 100  # the whole test install, not only the direct dependencies
  # torch's wheel here is 2.13.0+cpu; a pin with '+cpu' would refuse the CUDA build of the same version.
  assert not [f"{n}=={v}" for n, v in found.items() if v.local], "pins with a local label"


def test_every_dependency_is_pinned_within_its_pyproject_bounds():
  found = pins((ROOT / "constraints.txt").read_text())
  problems = []
  for req in requirements():
    name = canonicalize_name(req.name)
    if name not in found:
      problems.append(f"{req}: not pinned")
    elif not req.specifier.contains(found[name], prereleases=True):
      problems.append(f"{req}: pinned at {found[name]}, outside pyproject.toml's bounds")
  assert not problems, "\n".join(problems)
  # jax and its compiled half move together (jax requires the jaxlib of its own version).
  assert found["jax"] == found["jaxlib"]


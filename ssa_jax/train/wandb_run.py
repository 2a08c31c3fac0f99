"""Weights & Biases tracking (config.train.wandb; the optional extra `pip install -e '.[wandb]'`).

The run's W&B id is kept in WORKDIR/wandb_id, so a resumed training run continues the same W&B run. With
WANDB_MODE=offline nothing touches the network: the run is written under the workdir's wandb/ directory and
`wandb sync` uploads it later. W&B drops a resumed run's records for steps it already holds (the steps between
the restored checkpoint and the stop), with a warning: they are the same values, recomputed.
"""

from __future__ import annotations

import secrets
import tempfile
from typing import Any

from etils import epath

ID_FILE = "wandb_id"


def _run_id(workdir: epath.Path) -> str:
  """The id this workdir's runs use: the stored one, or a new one stored for the runs that resume it."""
  path = workdir / ID_FILE
  if path.exists():
    return path.read_text().strip()
  run_id = secrets.token_hex(4)
  path.write_text(run_id + "\n")
  return run_id


class WandbRun:
  """One W&B run per training workdir (primary host only): `log(scalars, step)`, then `close()`."""

  def __init__(self, workdir: epath.Path, project: str, name: str, entity: str, run_config: dict[str, Any]):
    try:
      import wandb  # optional: only runs with config.train.wandb need it
    except ImportError as e:
      raise ImportError("config.train.wandb=True needs the wandb package: pip install -e '.[wandb]'") from e
    local = not str(workdir).startswith("gs://")  # W&B writes its files through the local file system
    directory = str(workdir) if local else tempfile.mkdtemp(prefix="ssa_jax_wandb_")
    self.id = _run_id(workdir)
    self._run = wandb.init(project=project, name=name or workdir.name, entity=entity or None, id=self.id,
                           resume="allow", dir=directory, config=run_config)

  def log(self, scalars: dict[str, float], step: int) -> None:
    self._run.log(scalars, step=step)

  def close(self) -> None:
    self._run.finish()

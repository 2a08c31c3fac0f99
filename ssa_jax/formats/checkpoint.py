"""Orbax checkpoints: one layout for training runs and imported models (items `variables`, `config`, ...).

A checkpoint directory holds numbered step directories (orbax CheckpointManager). Every step carries the
`variables` item (the model's {'params', 'buffers'}) and a `config` JSON item (the full run config, whose `model`
section rebuilds the Decoder); training steps add `opt_state` and the data iterator state. Restores go against an
abstract target carrying shardings, so a checkpoint written on N devices restores onto M devices, or onto one CPU.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from ssa_jax.errors import ConfigError
from ssa_jax.model.config import ModelConfig, model_config_from_dict
from ssa_jax.model.decoder import Decoder
from ssa_jax.model.params import variable_shapes


class NotACheckpointError(FileNotFoundError):
  """The directory is neither a checkpoint directory nor one of its step directories."""


def resolve_step_dir(path: epath.PathLike) -> tuple[epath.Path, int]:
  """(checkpoint root, step) for a root (latest step) or a step directory."""
  path = epath.Path(path)
  if not path.exists():
    raise NotACheckpointError(f"{path}: does not exist")
  if path.name.isdigit() and (path / "variables").exists():
    return path.parent, int(path.name)
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / "variables").exists())
  if not steps:
    ckpt = path / "checkpoints"
    if ckpt.exists():  # a training workdir
      return resolve_step_dir(ckpt)
    raise NotACheckpointError(
        f"{path}: not an ssa-jax checkpoint (expected numbered step directories holding `variables`, "
        "or a training workdir with checkpoints/)")
  return path, steps[-1]


def read_config(path: epath.PathLike) -> dict[str, Any]:
  """The run config (a plain dict) saved with a checkpoint."""
  root, step = resolve_step_dir(path)
  if not (root / str(step) / "config").exists():
    raise NotACheckpointError(f"{root / str(step)}: has no config item")
  with ocp.CheckpointManager(root.absolute()) as mngr:
    return dict(mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])


def save_model(directory: epath.PathLike, model_cfg: ModelConfig, variables: dict, step: int = 0,
               run_config: dict | None = None) -> epath.Path:
  """Writes variables + config as checkpoint `step` of `directory` (synchronously)."""
  run_config = dict(run_config or {})
  run_config["model"] = dataclasses.asdict(model_cfg)
  with ocp.CheckpointManager(epath.Path(directory).absolute()) as mngr:
    mngr.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(variables), config=ocp.args.JsonSave(run_config)), force=True)
    mngr.wait_until_finished()
  return epath.Path(directory)


def load_model(path: epath.PathLike) -> tuple[Decoder, Any, dict]:
  """(Decoder, variables, run config) from a checkpoint root, step directory or training workdir, restored onto
  the first local device."""
  root, step = resolve_step_dir(path)
  run_config = read_config(path)
  cfg = model_config_from_dict(run_config["model"], where=f"{root}/{step}/config")
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                                    variable_shapes(cfg))
  with ocp.CheckpointManager(root.absolute()) as mngr:
    restored = mngr.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(abstract)))
  return Decoder(cfg), restored["variables"], run_config


# ------------------------------------------------------------------------------------------ training runs
def train_manager(workdir: epath.Path, keep: int, async_save: bool = True) -> ocp.CheckpointManager:
  """The CheckpointManager of a training workdir (WORKDIR/checkpoints), keeping the last `keep` steps."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
  return ocp.CheckpointManager((epath.Path(workdir) / "checkpoints").absolute(), options=options)


def save_train_state(mngr: ocp.CheckpointManager, state, data_states: list[dict], run_config: dict,
                     force: bool = False, step: int | None = None) -> bool:
  """Saves the variables, optimizer state, every process's data-iterator state and the run config at `step`.

  `step`: the training loop's own count (= state.step); None reads state.step, which waits for the device
  to finish the step (the loop passes its count so that only orbax's copy to the host waits)."""
  if step is None:
    step = int(jax.device_get(state.step))
  return mngr.save(step, force=force, args=ocp.args.Composite(
      variables=ocp.args.StandardSave(state.variables),
      opt_state=ocp.args.StandardSave(state.opt_state),
      data=ocp.args.JsonSave({"processes": data_states}),
      config=ocp.args.JsonSave(run_config),
  ))


def check_layer_layout(mngr: ocp.CheckpointManager, step: int, abstract_params) -> None:
  """Fails naming config.model.scan_layers when checkpoint `step` stores the other parameter layout."""
  saved = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
  saved_scan = bool(dict(saved.get("model") or {}).get("scan_layers", False))
  ours = "layers" in abstract_params
  if saved_scan != ours:
    raise ConfigError(
        f"config.model.scan_layers: {ours} here, but checkpoint {step} in {mngr.directory} stores "
        f"{'scanned (stacked)' if saved_scan else 'unrolled (layers_0, layers_1, ...)'} layers; resume with "
        f"--config.model.scan_layers={saved_scan} (eval and HF export read either layout)")


def restore_train_state(mngr: ocp.CheckpointManager, step: int, abstract_state, shardings):
  """(variables, opt_state, data states per process) restored onto `shardings` (any device count)."""
  check_layer_layout(mngr, step, abstract_state.params)
  target = jax.tree_util.tree_map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                                  abstract_state, shardings)
  restored = mngr.restore(step, args=ocp.args.Composite(
      variables=ocp.args.StandardRestore(target.variables),
      opt_state=ocp.args.StandardRestore(target.opt_state),
      data=ocp.args.JsonRestore(),
  ))
  return restored["variables"], restored["opt_state"], list(restored["data"]["processes"])


def gather_json(obj: Any) -> list[Any]:
  """Every process's JSON-serialisable `obj`, in process order, on every process."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32)).reshape(-1)
  padded = np.pad(data, (0, int(lengths.max()) - data.size))
  everything = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(everything[i][: lengths[i]])) for i in range(len(lengths))]

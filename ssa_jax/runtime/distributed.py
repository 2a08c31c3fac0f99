"""The `config.distributed` section and whether (and how) to call `jax.distributed.initialize()`.

  mode='auto'  initialize when jax's own cluster detection (SLURM, Open MPI, Cloud TPU pods on GCE / GKE,
               Kubernetes indexed Jobs: the `ClusterEnv`s of jax._src.clusters) reports more than one
               process, or when the fields below give more than one; one process otherwise.
  mode='on'    always initialize, passing the fields that are set; jax detects the rest.
  mode='off'   never (one process per job, or the caller initialized jax itself).

`coordinator_address` ('host:port'), `num_processes` and `process_id` override what jax detects; set all
three where no cluster is detected (two processes by hand: the same address, num_processes=2, process_id
0 and 1). jax also reads JAX_COORDINATOR_ADDRESS from the environment (never a process count): with only
that set, 'auto' asks for the two other fields instead of failing inside jax.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import jax
import ml_collections
from jax._src import clusters

from ssa_jax.errors import ConfigError

_log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
_FIELDS = ("mode", "coordinator_address", "num_processes", "process_id")


def distributed_config() -> ml_collections.ConfigDict:
  """Defaults of the `config.distributed` section (unset fields: '' / 0 / -1)."""
  c = ml_collections.ConfigDict()
  c.mode = "auto"  # one of MODES.
  c.coordinator_address = ""  # 'host:port' of process 0; '' = detected (or JAX_COORDINATOR_ADDRESS).
  c.num_processes = 0  # 0 = detected.
  c.process_id = -1  # -1 = detected.
  return c


def _fields(cfg: Any) -> tuple[str, dict[str, Any]]:
  """(mode, the jax.distributed.initialize keyword arguments that are set) from the section."""
  if not isinstance(cfg, (Mapping, ml_collections.ConfigDict)):
    raise ConfigError(f"config.distributed: expected a section ({', '.join(_FIELDS)}), got {cfg!r}")
  unknown = set(dict(cfg)) - set(_FIELDS)
  if unknown:
    raise ConfigError(f"config.distributed: unknown fields {sorted(unknown)}")
  mode = cfg.get("mode", "auto")
  if mode not in MODES:
    raise ConfigError(f"config.distributed.mode: expected one of {MODES}, got {mode!r}")
  address, num, pid = cfg.get("coordinator_address", "") or "", cfg.get("num_processes", 0), cfg.get("process_id", -1)
  if not isinstance(address, str):
    raise ConfigError(f"config.distributed.coordinator_address: expected 'host:port', got {address!r}")
  if not isinstance(num, int) or num < 0:
    raise ConfigError(f"config.distributed.num_processes: expected an int >= 1 (0 = detected), got {num!r}")
  if not isinstance(pid, int) or pid < -1 or (num and pid >= num):
    raise ConfigError(f"config.distributed.process_id: expected an int in [0, num_processes) (-1 = detected), "
                      f"got {pid!r}")
  return mode, {k: v for k, v, unset in (("coordinator_address", address, ""), ("num_processes", num, 0),
                                        ("process_id", pid, -1)) if v != unset}


def initialize_kwargs(cfg: Any, environ: Mapping[str, str] | None = None) -> dict[str, Any] | None:
  """The keyword arguments for jax.distributed.initialize(), or None where this run is one process."""
  environ = os.environ if environ is None else environ
  mode, kwargs = _fields(cfg)
  if mode == "off":
    return None
  # The cluster environment jax.distributed.initialize() would use, as it picks it; None when none.
  cluster = next((env for env in clusters.ClusterEnv._cluster_types  # pylint: disable=protected-access
                  if not env.opt_in_only_method and env.is_env_present()), None)
  if mode == "auto":
    if "num_processes" in kwargs:
      count = kwargs["num_processes"]
    elif cluster is not None:
      try:
        count = int(cluster.get_process_count())
      except Exception as e:  # pylint: disable=broad-except
        raise ConfigError(
            f"config.distributed.mode: 'auto' detected a {cluster.__name__} environment but could not read its "
            f"process count ({type(e).__name__}: {e}); set config.distributed.mode='off' for one process, or "
            "'on' with num_processes / process_id / coordinator_address") from e
      _log.info("distributed: %s detected with %d processes", cluster.__name__, count)
    elif kwargs.get("coordinator_address") or environ.get("JAX_COORDINATOR_ADDRESS"):
      count = 2  # Several processes meant; the check below names the missing fields.
    else:
      return None
    if count <= 1:
      return None
  if cluster is None:
    # Nothing for jax to detect the rest from: it would fail with "Number of processes must be defined".
    have = set(kwargs) | ({"coordinator_address"} if environ.get("JAX_COORDINATOR_ADDRESS") else set())
    missing = [f for f in ("coordinator_address", "num_processes", "process_id") if f not in have]
    if missing:
      raise ConfigError(
          f"config.distributed.{missing[0]}: no cluster was detected (SLURM, Open MPI, TPU pod, Kubernetes "
          f"indexed Job) to give it; set config.distributed.{', config.distributed.'.join(missing)} "
          "(coordinator_address may also come from JAX_COORDINATOR_ADDRESS)")
  return kwargs


def maybe_initialize(cfg: Any) -> bool:
  """Calls jax.distributed.initialize() when `initialize_kwargs` says so; True when it did."""
  if jax.distributed.is_initialized():
    return False
  kwargs = initialize_kwargs(cfg)
  if kwargs is None:
    return False
  jax.distributed.initialize(**kwargs)
  return True

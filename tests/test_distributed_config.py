"""config.distributed: when jax.distributed.initialize() is called and with what (no real initialize)."""

import jax
import ml_collections
import pytest
from jax._src import clusters

from ssa_jax.errors import ConfigError
from ssa_jax.runtime import distributed

_CLUSTER_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
                 "OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                 "OMPI_COMM_WORLD_LOCAL_RANK", "KUBERNETES_SERVICE_HOST", "JAX_COORDINATOR_ADDRESS")


@pytest.fixture(autouse=True)
def bare_env(monkeypatch):
  for var in _CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)


def section(**kw):
  c = distributed.distributed_config()
  c.update(kw)
  return c


def slurm(monkeypatch, ntasks):
  for var, value in (("SLURM_JOB_ID", "4242"), ("SLURM_STEP_NODELIST", "node[1-2]"), ("SLURM_NTASKS", str(ntasks)),
                     ("SLURM_PROCID", "1"), ("SLURM_LOCALID", "0")):
    monkeypatch.setenv(var, value)


def test_auto_is_one_process_without_a_cluster_and_initializes_on_a_multi_task_slurm_job(monkeypatch):
  assert distributed.initialize_kwargs(section()) is None
  slurm(monkeypatch, 1)
  assert distributed.initialize_kwargs(section()) is None  # a one-task job: no coordinator needed
  slurm(monkeypatch, 2)
  assert distributed.initialize_kwargs(section()) == {}  # jax reads address / count / id itself
  assert distributed.initialize_kwargs(section(mode="off")) is None


def test_auto_follows_jax_detection_for_open_mpi_and_kubernetes(monkeypatch):
  monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1531576320.0;tcp://10.96.0.1:34911")
  monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
  monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
  monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "0")
  assert distributed.initialize_kwargs(section()) == {}
  for var in ("OMPI_MCA_orte_hnp_uri", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(var)

  class FakeIndexedJob:  # stands in for jax's K8sCluster, which asks the Kubernetes API for the Job
    __name__ = "FakeIndexedJob"
    opt_in_only_method = False
    parallelism = 8

    @classmethod
    def is_env_present(cls):
      return True

    @classmethod
    def get_process_count(cls):
      return cls.parallelism

  monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [FakeIndexedJob])
  assert distributed.initialize_kwargs(section()) == {}
  FakeIndexedJob.parallelism = 1
  assert distributed.initialize_kwargs(section()) is None

  def broken():
    raise RuntimeError("jobs must be indexed")

  monkeypatch.setattr(FakeIndexedJob, "get_process_count", broken)
  with pytest.raises(ConfigError, match="config.distributed.mode.*jobs must be indexed"):
    distributed.initialize_kwargs(section())


def test_a_coordinator_address_alone_asks_for_the_process_count_and_id(monkeypatch):
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:12345")
  with pytest.raises(ConfigError, match=r"config.distributed.num_processes.*config.distributed.process_id"):
    distributed.initialize_kwargs(section())
  got = distributed.initialize_kwargs(section(num_processes=2, process_id=1))
  assert got == {"num_processes": 2, "process_id": 1}
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
  full = dict(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0)
  assert distributed.initialize_kwargs(section(**full)) == full
  assert distributed.initialize_kwargs(section(num_processes=1, process_id=0)) is None  # auto: one process


def test_on_always_initializes_with_the_fields_set_and_checks_them(monkeypatch):
  slurm(monkeypatch, 1)
  assert distributed.initialize_kwargs(section(mode="on")) == {}
  assert distributed.initialize_kwargs(section(mode="on", process_id=0)) == {"process_id": 0}
  monkeypatch.delenv("SLURM_JOB_ID")
  with pytest.raises(ConfigError, match="config.distributed.coordinator_address"):
    distributed.initialize_kwargs(section(mode="on"))
  with pytest.raises(ConfigError, match="config.distributed.mode"):
    distributed.initialize_kwargs(section(mode="sometimes"))
  with pytest.raises(ConfigError, match="config.distributed.process_id"):
    distributed.initialize_kwargs(section(num_processes=2, process_id=2))


@pytest.mark.parametrize("mode, calls", [("auto", 1), ("off", 0), ("on", 1)])
def test_maybe_initialize_calls_jax_once_as_the_section_says(monkeypatch, mode, calls):
  slurm(monkeypatch, 2)
  seen = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.append(kw))
  assert distributed.maybe_initialize(section(mode=mode)) == bool(calls)
  distributed.maybe_initialize(ml_collections.ConfigDict({"mode": "off"}))
  distributed.maybe_initialize({"mode": "on", "num_processes": 2, "process_id": 1})
  assert seen == [{}] * calls + [{"num_processes": 2, "process_id": 1}]
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: True)
  assert not distributed.maybe_initialize(section(mode="on"))  # already initialized: never twice


@pytest.mark.parametrize("value", ["auto", "on", True, False, ""])
def test_a_bare_value_instead_of_the_section_is_refused(value):
  with pytest.raises(ConfigError, match=r"config.distributed: expected a section \(mode, coordinator_address"):
    distributed.initialize_kwargs(value)

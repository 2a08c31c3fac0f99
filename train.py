"""Train or fine-tune an SSA (or vanilla) decoder.

  python train.py --config=configs/tiny_ssa.py                  # the offline demo, into runs/tiny_ssa
  python train.py --config=configs/pythia160m_ssa.py --workdir=gs://bucket/run --config.data.path=gs://bucket/SlimPajama-627B --config.data.tokenizer_path=/tokenizers/pythia
  python train.py --config=configs/pythia160m_ssa_ft.py --config.init.hf_dir=/models/pythia-160m --config.data.path=... --config.data.tokenizer_path=/models/pythia-160m
  python train.py --config=configs/llama2_7b_ssa.py --dry_run   # check the config, compile the step, print sizes
  python train.py --config=configs/llama2_7b_ssa.py --dry_run --target=v5p-8   # compiled for another accelerator

--config is required. Any config field can be overridden as --config.a.b=value. The workdir defaults to
runs/<config file stem>. Re-running with the same workdir resumes exactly from the latest checkpoint there
(a workdir whose checkpoint another config made is refused, naming the fields; a complete run says so and
exits 0); Ctrl-C (or SIGTERM) stops after the step under way and saves a checkpoint, and with several
processes a signal to any one of them makes every process save the same step and exit (a second signal, or
config.train.preemption_deadline_s after the first, exits at once). One run per workdir.
Mistakes in flags or the config print one `error: ...` line and exit 2 (--verbosity=1: the traceback).
"""

import json
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from ssa_jax.errors import ConfigError
from ssa_jax.runtime import cli_errors
from ssa_jax.train.dry_run import dry_run, dry_run_memory_hint
from ssa_jax.train.loop import train
from ssa_jax.train.workdir_lock import WorkdirLockedError

config_flags.DEFINE_config_file("config", None, "Run config (a file in configs/), e.g. configs/tiny_ssa.py (the "
                                "offline demo). Required.", lock_config=True)
flags.register_validator("config", lambda config: config is not None,
                         message="--config is required: a run config from configs/, e.g. "
                                 "--config=configs/tiny_ssa.py (the offline demo) or configs/pythia160m_ssa.py")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard, summary.json and "
                    "results.json (default: runs/<config file stem>).")
flags.DEFINE_bool("dry_run", False, "Validate the config, build the abstract state on the mesh, compile the train "
                  "step on abstract inputs (no data read, no parameter allocated), print one JSON line, exit.")
flags.DEFINE_enum("dry_run_stage", "compile", ["lower", "compile"],
                  "--dry_run's last stage: 'lower' stops before XLA compiles (seconds even for 8B models; no "
                  "memory figures), 'compile' also compiles and reports memory per device.")
flags.DEFINE_string("target", None, "An accelerator to compile for on this host, e.g. v5p-8, v5e-16, h100-8; "
                    "needs --dry_run.")
flags.DEFINE_integer("target_slices", 1, "--target: the number of slices (multi-slice TPU pods).")
flags.DEFINE_bool("target_estimate", True, "--target on a TPU: also the compiler's roofline step estimate (three "
                  "more, smaller compiles, about 3x the main compile's time); --notarget_estimate: memory and "
                  "kernel only.")


def _dry_run() -> None:
  """--dry_run: the report as one JSON line (the last stdout line), with a hint when it fits no device."""
  target = flags.FLAGS.target
  kwargs = {"target": target, "target_slices": flags.FLAGS.target_slices,
            "target_estimate": flags.FLAGS.target_estimate} if target else {}
  report = dry_run(flags.FLAGS.config, stage=flags.FLAGS.dry_run_stage, **kwargs)
  hint = dry_run_memory_hint(report.get("memory_bytes_per_device"), target)
  if hint:
    report["hint"] = hint
    print(f"hint: {hint}", file=sys.stderr, flush=True)
  print(json.dumps(report))


def main(argv):
  """Trains, or with --dry_run checks and compiles, the run --config describes."""
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  if flags.FLAGS.target and not flags.FLAGS.dry_run:
    raise ConfigError(f"--target={flags.FLAGS.target}: needs --dry_run (it compiles for that accelerator on "
                      "this host; training runs on the devices it finds)")
  if flags.FLAGS.dry_run:
    _dry_run()
    return

  workdir = flags.FLAGS.workdir or "runs/" + Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
  summary = train(flags.FLAGS.config, workdir)
  print(json.dumps(summary, indent=2))
  if summary.get("stopped") == "SIGINT":
    sys.exit(130)  # interrupted (checkpoint saved): the shell convention, so that `train && eval` stops here


if __name__ == "__main__":
  cli_errors.run(main, user_errors=(ConfigError, WorkdirLockedError))

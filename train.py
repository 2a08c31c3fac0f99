"""Train or fine-tune an SSA (or vanilla) decoder.

  python train.py --config=configs/tiny_ssa.py --workdir=runs/tiny_ssa
  python train.py --config=configs/pythia160m_ssa.py --workdir=gs://bucket/run --config.data.path=gs://bucket/SlimPajama-627B
  python train.py --config=configs/pythia160m_ssa_ft.py --config.init.hf_dir=/models/pythia-160m --config.data.path=...
  python train.py --config=configs/llama2_7b_ssa.py --dry_run   # check the config, compile the step, print sizes

Any config field can be overridden as --config.a.b=value. Re-running with the same workdir resumes exactly
from the latest checkpoint there; Ctrl-C (or SIGTERM) saves a checkpoint first, and with several processes a
signal to any one of them makes every process save the same step and exit (a second signal, or
config.train.preemption_deadline_s after the first, exits at once). One run per workdir.
Mistakes in flags or the config print one `error: ...` line and exit 2 (--verbosity=1: the traceback).
"""

import json
import sys
from pathlib import Path

from absl import flags, logging
from ml_collections import config_flags

from ssa_jax import cli_errors

config_flags.DEFINE_config_file("config", "configs/tiny_ssa.py", "Run config (a file in configs/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and results.json.")
flags.DEFINE_bool("dry_run", False, "Validate the config, build the abstract state on the mesh, compile the train "
                  "step on abstract inputs (no data read, no parameter allocated), print one JSON line, exit.")
flags.DEFINE_enum("dry_run_stage", "compile", ["lower", "compile"],
                  "--dry_run's last stage: 'lower' stops before XLA compiles (seconds even for 8B models; no "
                  "memory figures), 'compile' also compiles and reports memory per device.")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  if flags.FLAGS.dry_run:
    from ssa_jax.train.dry_run import dry_run

    report = dry_run(flags.FLAGS.config, stage=flags.FLAGS.dry_run_stage)
    print(json.dumps(report))  # the last stdout line: one JSON object
    return

  from ssa_jax.train.loop import train

  # Default workdir: runs/<config file stem>, e.g. runs/tiny_ssa.
  workdir = flags.FLAGS.workdir or "runs/" + Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
  summary = train(flags.FLAGS.config, workdir)
  print(json.dumps(summary, indent=2))
  if summary.get("stopped") == "SIGINT":
    sys.exit(130)  # interrupted (checkpoint saved): the shell convention, so that `train && eval` stops here


if __name__ == "__main__":
  from ssa_jax.config import ConfigError
  from ssa_jax.train.workdir_lock import WorkdirLockedError

  cli_errors.run(main, user_errors=(ConfigError, WorkdirLockedError))

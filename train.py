"""Train or fine-tune an SSA (or vanilla) decoder.

  python train.py --config=configs/tiny_ssa.py --workdir=runs/tiny_ssa
  python train.py --config=configs/pythia160m_ssa.py --workdir=gs://bucket/run --config.data.path=gs://bucket/SlimPajama-627B
  python train.py --config=configs/pythia160m_ssa_ft.py --config.init.hf_dir=/models/pythia-160m --config.data.path=...

Any config field can be overridden as --config.a.b=value. Re-running with the same workdir resumes exactly
from the latest checkpoint there.
"""

import json
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", "configs/tiny_ssa.py", "Run config (a file in configs/).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics.jsonl, TensorBoard and results.json.")


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every file operation at INFO
  from ssa_jax.train.loop import train

  # Default workdir: runs/<config file stem>, e.g. runs/tiny_ssa.
  workdir = flags.FLAGS.workdir or "runs/" + Path(config_flags.get_config_filename(flags.FLAGS["config"])).stem
  summary = train(flags.FLAGS.config, workdir)
  print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main)

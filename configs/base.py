"""The full run config: model preset + SSA variant, with the data / train / eval sections' defaults."""

import ml_collections

from configs import models


def get_config(model: str = "tiny", ssa: str = "ssa") -> ml_collections.ConfigDict:
  """Config for preset `model` with SSA variant `ssa` ('vanilla', 'ssa', 'ssa_ws')."""
  config = ml_collections.ConfigDict()
  config.model = models.model_config(model, ssa)
  return config

"""The paper's Table 8 (Appendix B.3): one temperature term swapped at a time, as configs on any preset.

Rows: Token + YaRN, Token + Constant, Position + Frequency, Position + Token (= SSA, the 'ssa' preset), and one the
paper does not have: Token + Llama-4 (Llama-4's attention temperature tuning, the latest production method of the
family). YaRN, the constant and Llama-4's are logit (query) temperatures: under them v (and k) keep the token term
alone, tau_v = 1 + tanh(f_v). Llama-4's is 1 below n = llama4_floor_scale (8192): on windows shorter than that
(the demo's 128) that row is the token term alone unless --config.model.ssa.llama4_floor_scale is lowered.
"""

import ml_collections

from configs import base

ROWS = {
    "token_yarn": dict(position_kind="yarn"),
    "token_constant": dict(position_kind="constant"),
    # feature_path 'demo': token counts of the demo corpus's train split, counted once at start (demo mode only).
    "position_frequency": dict(token_kind="frequency"),
    "position_token": dict(),
    "token_llama4": dict(position_kind="llama4"),  # not in the paper
}


def get_config(row: str, model: str = "tiny", mode: str = "demo") -> ml_collections.ConfigDict:
  """Table 8 row `row` (a key of ROWS) on preset `model`; the frequency row reads config.model.ssa.feature_path."""
  if row not in ROWS:
    raise ValueError(f"unknown Table 8 row {row!r}; expected one of {sorted(ROWS)}")
  config = base.get_config(model, "ssa", mode=mode)
  config.model.ssa.update(ROWS[row])
  if row == "position_frequency" and mode == "demo":
    config.model.ssa.feature_path = "demo"
  return config

"""Table 8 row on the demo: Position + Frequency: SSA's position term with the token-frequency feature (tanh(beta_h phi(token))) in place of the token MLP."""

from configs import table8


def get_config():
  return table8.get_config("position_frequency")

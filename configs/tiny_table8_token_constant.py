"""Table 8 row on the demo: Token + Constant: SSA's token term with a learned per-head constant query temperature in place of the position term."""

from configs import table8


def get_config():
  return table8.get_config("token_constant")

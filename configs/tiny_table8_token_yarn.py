"""Table 8 row on the demo: Token + YaRN: SSA's token term with YaRN's fixed 1 + 0.1 log n query temperature in place of the learned position term."""

from configs import table8


def get_config():
  return table8.get_config("token_yarn")

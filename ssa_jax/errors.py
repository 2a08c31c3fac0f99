"""The one error a user's mistake raises: ConfigError names the field or file and what was expected."""


class ConfigError(ValueError):
  """A configuration value or input file is invalid; the message names the field (or file)."""

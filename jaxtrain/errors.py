"""The one exception type for mistakes a user can fix (config, data, paths, checkpoints)."""


class UserError(Exception):
  """Raised with a one-line message naming what to fix; the CLI prints it and exits 1."""

"""Deprecated: the workdir lock lives in `jaxtrain.run.workdir` (WorkdirLock, holder, lock_file).

Kept for code written against it, with a warning naming the replacement.
"""

import warnings

from jaxtrain.run.workdir import LOCK_FILE, WorkdirLock, holder, lock_file  # noqa: F401

warnings.warn(
  "jaxtrain.run.workdir_lock is deprecated: import WorkdirLock, holder and lock_file "
  "from jaxtrain.run.workdir",
  DeprecationWarning,
  stacklevel=2,
)

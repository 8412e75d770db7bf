"""Files written whole or not at all: the one place that renames a new file over an old one.

Every record jaxtrain writes (a workdir's JSON files, metrics rewritten on
resume, predictions, an exported model, an imported dataset's schema and
history) goes through here: the content is written to a temporary file in
the same folder, flushed to the disk, and renamed over the target, so a
reader (or a run resumed after kill -9 or a full disk) sees the old file or
the new one, never half of one. A failed write leaves the old file as it was
and no temporary behind.

Plain Python only (no jax): data/, run/ and tools/ all use it.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import IO, Any, Iterable, Iterator


def _temporary(path: str) -> str:
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.tmp.{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
  """A file to write `path`'s new content to; it replaces `path` only if the block ends
  without an exception (a signal's KeyboardInterrupt included)."""
  path = os.fspath(path)
  tmp = _temporary(path)
  try:
    with open(tmp, mode, **open_kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  with replacing(path, "wb") as f:
    f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
  with replacing(path, "w", encoding="utf-8") as f:
    f.write(text)


def write_json(
  path: str | os.PathLike, value: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> None:
  """`value` as JSON, ending with a newline."""
  write_text(path, json.dumps(value, indent=indent, sort_keys=sort_keys) + "\n")


def write_lines(path: str | os.PathLike, lines: Iterable[str]) -> None:
  """Each of `lines` (without its newline) on a line of its own."""
  with replacing(path, "w", encoding="utf-8") as f:
    f.writelines(line + "\n" for line in lines)


def copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
  """`source`'s bytes as `target`, whole or not at all."""
  with open(source, "rb") as f:
    write_bytes(target, f.read())


def publish(folder: str | os.PathLike, target: str | os.PathLike) -> None:
  """Renames a folder written in full (under a name of its own) to `target`, at once."""
  os.replace(folder, target)

"""Derived columns and splits: lags by time within each series, and which split each row is in."""

from __future__ import annotations

import datetime as dt
import logging
import re

import numpy as np

from jaxtrain.data.columns import parse_time
from jaxtrain.data.importing.spec import ImportSpec, SPLITS
from jaxtrain.errors import UserError

log = logging.getLogger("jaxtrain")


_UNITS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_frequency(text: str) -> int:
  """Seconds from '30min', '1h', '1d', '7d', '1w' or a number of seconds."""
  match = re.fullmatch(r"\s*(\d+)\s*(s|min|h|d|w)?\s*", text or "")
  if not match or int(match.group(1)) <= 0:
    raise UserError(
      f"--frequency={text!r} should be a count and a unit: 30min, 1h, 1d, 7d (or seconds)"
    )
  return int(match.group(1)) * _UNITS[match.group(2) or "s"]


def _describe_seconds(seconds: int) -> str:
  for unit in ("w", "d", "h", "min"):
    if seconds % _UNITS[unit] == 0:
      return f"{seconds // _UNITS[unit]}{unit}"
  return f"{seconds}s"


def add_lags(parsed: dict[str, list], schema: dict, spec: ImportSpec, where: list):
  """Adds `<label>_lag_k`: the label k periods earlier in the row's series.

  A period is `--frequency` (e.g. 1h), or the most common step between a
  series' consecutive times. The lag is found by time, not by counting rows:
  a row whose lag time is before its series' first row has no history and is
  dropped; one whose lag time falls in a gap (a missing hour) is refused,
  naming it, or with `--gaps drop` dropped and counted. Never misaligned.
  """
  lags = [int(k) for k in spec.lags.split(",") if k.strip()]
  if not lags:
    return parsed, where
  time_cols = [c for c, k in schema["columns"].items() if k == "time"]
  if not time_cols:
    raise UserError("--lags needs a time column (declare one with --columns col=time)")
  if spec.series and spec.series not in parsed:
    raise UserError(f"--series={spec.series!r} is not a column")
  if spec.gaps not in ("refuse", "drop"):
    raise UserError(f"--gaps={spec.gaps!r} must be refuse or drop")
  n = len(where)
  names, codes = np.unique(
    np.asarray([str(v) for v in (parsed[spec.series] if spec.series else [""] * n)]),
    return_inverse=True,
  )
  times = np.asarray(parsed[time_cols[0]], np.int64)
  target = np.asarray(parsed[schema["label"]], np.float64)
  order = np.lexsort((times, codes))
  same = codes[order][1:] == codes[order][:-1]
  steps = np.diff(times[order])[same]
  if (steps == 0).any():
    at = np.flatnonzero(same & (np.diff(times[order]) == 0))[0]
    (_, l1), (p2, l2) = where[order[at]], where[order[at + 1]]
    raise UserError(
      f"{p2} line {l2}: series {str(names[codes[order[at]]])!r} already has a row at this "
      f"time (line {l1}); lags need one row per series and time"
    )
  if spec.frequency:
    freq, how = parse_frequency(spec.frequency), "declared"
  else:
    if not (steps > 0).any():
      raise UserError("--lags: no series has two rows; nothing to lag")
    values, counts = np.unique(steps, return_counts=True)
    freq, how = int(values[np.argmax(counts)]), "detected: the most common step"
  first = np.full(len(names), np.iinfo(np.int64).max)
  np.minimum.at(first, codes, times)
  span = int(times.max() - min(times.min(), first.min()) + 1 + max(lags) * freq)
  base = int(times.min() - max(lags) * freq)
  keys = codes.astype(np.int64) * span + (times - base)
  sorted_keys = keys[order]
  keep = np.ones(n, bool)
  lagged, gap_lag = {}, np.zeros(n, np.int64)  # the first lag of each row that falls in a gap
  for k in reversed(lags):
    pos = np.clip(np.searchsorted(sorted_keys, keys - k * freq), 0, n - 1)
    found = sorted_keys[pos] == keys - k * freq
    in_gap = (times - k * freq >= first[codes]) & ~found  # after the series began: a gap
    gap_lag[in_gap] = k
    keep &= found
    lagged[k] = np.where(found, target[order[pos]], 0.0)
  gaps = gap_lag > 0
  if gaps.any() and spec.gaps == "refuse":
    i = int(np.flatnonzero(gaps)[0])
    path, line = where[i]
    k = int(gap_lag[i])
    missing = dt.datetime.fromtimestamp(times[i] - k * freq, dt.timezone.utc).isoformat()
    raise UserError(
      f"{path} line {line}: series {str(names[codes[i]])!r} has no row at {missing} "
      f"(lag {k} x {_describe_seconds(freq)}, the frequency {how}): "
      f"{int(gaps.sum())} rows' lags fall in gaps; fill them in the file, set "
      "--frequency, or pass --gaps drop"
    )
  log.info(
    "lags %s (every %s, %s): dropped %d rows with too little history and %d whose lags "
    "fall in gaps",
    lags,
    _describe_seconds(freq),
    how,
    int((~keep & ~gaps).sum()),
    int(gaps.sum()),
  )
  keep_rows = np.flatnonzero(keep)
  out = {c: [v[i] for i in keep_rows] for c, v in parsed.items()}
  for k in lags:
    out[f"{schema['label']}_lag_{k}"] = [float(x) for x in lagged[k][keep_rows]]
    schema["columns"][f"{schema['label']}_lag_{k}"] = "float"
  schema["lag_frequency_seconds"] = freq
  return out, [where[i] for i in keep_rows]


def fraction_codes(spec: ImportSpec, n: int) -> np.ndarray:
  """`--split fraction`: each of n rows' split (an index into SPLITS), by a seeded permutation."""
  try:
    fractions = [float(x) for x in spec.fractions.split(",")]
  except ValueError:
    raise UserError(
      f"--fractions={spec.fractions!r} should be three numbers, e.g. 0.8,0.1,0.1"
    ) from None
  if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
    raise UserError(
      f"--fractions={spec.fractions!r} should be three fractions (train, "
      "validation, test) summing to 1"
    )
  order = np.random.default_rng(spec.seed).permutation(n)
  bounds = np.round(np.cumsum(fractions) * n).astype(int)
  codes = np.empty(n, np.uint8)
  for i, (lo, hi) in enumerate(zip([0, *bounds[:2]], bounds)):
    codes[order[lo:hi]] = i
  return codes


def time_codes(spec: ImportSpec, times: np.ndarray) -> np.ndarray:
  """`--split time:COL`: before the first cutoff trains, then validation, then test."""
  cuts = [parse_time(c) for c in spec.cutoffs.split(",") if c.strip()] if spec.cutoffs else []
  if len(cuts) != 2 or cuts[0] > cuts[1]:
    raise UserError(
      f"--cutoffs={spec.cutoffs!r} should be two times, where validation then "
      "test start (e.g. 2024-05-01,2024-06-01)"
    )
  return np.where(times < cuts[0], 0, np.where(times < cuts[1], 1, 2)).astype(np.uint8)


def assign_splits(parsed, rows_where, spec: ImportSpec, raw_split_column=None) -> np.ndarray:
  """The split name of every row."""
  n = len(rows_where)
  kind, _, column = spec.split.partition(":")
  if kind == "fraction":
    return np.asarray(SPLITS, object)[fraction_codes(spec, n)]
  if kind == "column":
    return np.asarray([str(v) for v in raw_split_column], object)
  if kind == "time":
    if column not in parsed:
      raise UserError(f"--split=time:{column}: no column {column!r}")
    return np.asarray(SPLITS, object)[time_codes(spec, np.asarray(parsed[column], np.int64))]
  raise UserError(f"--split={spec.split!r} must be fraction, column:COL or time:COL")

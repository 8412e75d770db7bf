"""`jaxtrain report DIRS... --out DIR`: runs side by side, as a static page and PNGs.

DIRS are workdirs or sweep directories (every trial of a sweep is a run).
The page shows the train/eval curves of all runs overlaid, and for sweeps
each parameter against the objective and Optuna's parameter importances.
`plot_data.json` holds exactly what was plotted, for other tools (and tests).
"""

from __future__ import annotations

import html
import json
import os
from typing import Any

from jaxtrain.errors import UserError, require
from jaxtrain import files
from jaxtrain.run import workdir as wd
from jaxtrain.run.metric_writers import flatten_config

CURVES = ("train/loss", "eval/loss", "eval/accuracy")
SKIPPED = (
  "time",
  "step",
  "split",
  "learning_rate",
  "steps_per_sec",
  "examples_per_sec",
  "data_wait",
)


def _run(name: str, workdir: str, trial: dict | None = None) -> dict[str, Any]:
  events = wd.read_events(workdir)
  curves: dict[str, list] = {}
  final: dict[str, float] = {}
  for e in events:
    for k, v in e.items():
      if k not in SKIPPED and isinstance(v, (int, float)):
        curves.setdefault(f"{e['split']}/{k}", []).append([e["step"], v])
        final[f"{e['split']}/{k}"] = v
  config = wd.read_config(workdir) or {}
  return {
    "name": name,
    "workdir": workdir,
    "curves": curves,
    "final": final,
    "steps": max((e["step"] for e in events), default=0),
    "config": flatten_config(config),
    "trial": trial,
  }


def collect(dirs: list[str]) -> dict[str, Any]:
  """Runs and sweeps found in `dirs`; an unknown directory is a UserError naming it."""
  from jaxtrain.tools import sweep

  runs, sweeps = [], []
  for d in dirs:
    if os.path.exists(os.path.join(d, "sweep.json")):
      require("optuna", "report", "the report of a sweep")
      info = json.load(open(os.path.join(d, "sweep.json")))
      result = sweep.summary(d, info.get("storage"))
      label = os.path.basename(os.path.abspath(d))
      for t in result["trials"]:
        if t["workdir"] and os.path.isdir(os.path.join(d, t["workdir"])):
          runs.append(_run(f"{label}/trial {t['number']}", os.path.join(d, t["workdir"]), t))
      sweeps.append(
        {
          "name": label,
          "dir": d,
          "metric": info["metric"],
          "direction": info["direction"],
          "space": info["space"],
          "result": result,
          "importance": _importance(d, info.get("storage")),
        }
      )
    elif os.path.exists(wd.metrics(d)):
      runs.append(_run(os.path.basename(os.path.abspath(d)) or d, d))
    else:
      raise UserError(f"{d} is neither a workdir (no metrics.jsonl) nor a sweep (no sweep.json)")
  return {"runs": runs, "sweeps": sweeps}


def _importance(sweep_dir: str, storage: str | None) -> dict[str, float]:
  import optuna
  from jaxtrain.tools import sweep

  study = sweep.open_study(sweep_dir, storage, create=False)
  complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
  if len(complete) < 2:
    return {}
  try:
    return dict(optuna.importance.get_param_importances(study))
  except (RuntimeError, ValueError):  # e.g. a parameter that never varied
    return {}


def _plot_curves(runs, path: str) -> dict:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  names = [c for c in CURVES if any(c in r["curves"] for r in runs)]
  data = {c: {r["name"]: r["curves"][c] for r in runs if c in r["curves"]} for c in names}
  fig, axes = plt.subplots(
    1, max(len(names), 1), figsize=(5 * max(len(names), 1), 4), squeeze=False
  )
  for ax, curve in zip(axes[0], names):
    for run, points in data[curve].items():
      ax.plot([p[0] for p in points], [p[1] for p in points], label=run, linewidth=1.2)
    ax.set_title(curve)
    ax.set_xlabel("step")
    if curve.endswith("loss"):
      ax.set_yscale("log")
  if len(runs) <= 12:
    axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return data


def _plot_sweep(sweep: dict, out: str) -> dict:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  trials = [
    t for t in sweep["result"]["trials"] if t["value"] is not None and t["state"] == "COMPLETE"
  ]
  params = sorted(sweep["space"])
  data = {"objective": sweep["metric"], "params": {}, "importance": sweep["importance"]}
  pictures = {}
  if params:
    fig, axes = plt.subplots(1, len(params), figsize=(4.5 * len(params), 3.8), squeeze=False)
    for ax, p in zip(axes[0], params):
      points = [[t["params"][p], t["value"], t["number"]] for t in trials if p in t["params"]]
      data["params"][p] = points
      xs = [x if isinstance(x, (int, float)) else str(x) for x, _, _ in points]
      ax.scatter(xs, [y for _, y, _ in points], s=18)
      if sweep["space"][p]["kind"] == "loguniform":
        ax.set_xscale("log")
      ax.set_xlabel(p)
      ax.set_ylabel(sweep["metric"])
    fig.tight_layout()
    pictures["params"] = f"{sweep['name']}-params.png"
    fig.savefig(os.path.join(out, pictures["params"]), dpi=100)
    plt.close(fig)
  if sweep["importance"]:
    fig, ax = plt.subplots(figsize=(5, 0.5 + 0.5 * len(sweep["importance"])))
    names = list(sweep["importance"])[::-1]
    ax.barh(names, [sweep["importance"][n] for n in names])
    ax.set_xlabel(f"importance for {sweep['metric']}")
    fig.tight_layout()
    pictures["importance"] = f"{sweep['name']}-importance.png"
    fig.savefig(os.path.join(out, pictures["importance"]), dpi=100)
    plt.close(fig)
  data["files"] = pictures
  return data


def _table_rows(runs) -> tuple[list[str], list[list[str]]]:
  finals = sorted(
    {
      k
      for r in runs
      for k in r["final"]
      if k.split("/")[0] in ("train", "eval", "test") and k.split("/")[1] in ("loss", "accuracy")
    }
  )
  varied = sorted(
    k
    for k in {k for r in runs for k in r["config"]}
    if len({str(r["config"].get(k)) for r in runs}) > 1
  )
  header = ["run", "steps", *varied, *finals]
  rows = [
    [
      r["name"],
      str(r["steps"]),
      *[_fmt(r["config"].get(k)) for k in varied],
      *[_fmt(r["final"].get(k)) for k in finals],
    ]
    for r in runs
  ]
  return header, rows


def _fmt(v) -> str:
  return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_report(dirs: list[str], out: str) -> dict[str, Any]:
  """Writes index.html, curves.png, per-sweep PNGs and plot_data.json into `out`."""
  found = collect(dirs)
  if not found["runs"]:
    raise UserError(f"no runs with metrics in {', '.join(dirs)}")
  os.makedirs(out, exist_ok=True)
  plot_data = {
    "curves": _plot_curves(found["runs"], os.path.join(out, "curves.png")),
    "sweeps": {s["name"]: _plot_sweep(s, out) for s in found["sweeps"]},
    "runs": [r["name"] for r in found["runs"]],
  }
  files.write_json(os.path.join(out, "plot_data.json"), plot_data, indent=1)
  header, rows = _table_rows(found["runs"])
  table = (
    "<table><tr>"
    + "".join(f"<th>{html.escape(h)}</th>" for h in header)
    + "</tr>"
    + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    + "</table>"
  )
  sections = ["<h2>Curves</h2><img src='curves.png' alt='curves'>", "<h2>Runs</h2>" + table]
  for s in found["sweeps"]:
    best = s["result"]["best"]
    text = (
      f"best: trial {best['number']}, {s['metric']} = {best['value']:.5g}"
      if best
      else "no complete trial"
    )
    images = "".join(
      f"<img src='{html.escape(f)}' alt='{k}'>"
      for k, f in plot_data["sweeps"][s["name"]]["files"].items()
    )
    sections.append(f"<h2>Sweep {html.escape(s['name'])}</h2><p>{html.escape(text)}</p>{images}")
  with files.replacing(os.path.join(out, "index.html")) as f:
    f.write(
      "<!doctype html><html><head><meta charset='utf-8'><title>jaxtrain report</title>"
      "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
      "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}img{max-width:100%}"
      "</style></head><body><h1>jaxtrain report</h1>" + "".join(sections) + "</body></html>\n"
    )
  return {"header": header, "rows": rows, "plot_data": plot_data}


def format_summary(summary: dict) -> str:
  rows = [summary["header"], *summary["rows"]]
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

"""Shared pieces of the reproduction studies: the run context, seeded training through the project's
loop (:func:`sparsecodes.train.trainer.fit`), mean ± std aggregation over seeds, Markdown tables, plots and the
output folder (``results.json``, ``results.md``, ``plots/``).

What this does not do: pick hyperparameters (each study states its own), or judge a claim by taste
(each study states the criterion its verdict follows).
"""

from __future__ import annotations

import json
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
import torch

from sparsecodes.fsutil import write_json
from sparsecodes.train.config import TrainConfig
from sparsecodes.train.models import SparseAutoencoder, build, make_config
from sparsecodes.train.trainer import DistInfo, fit

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOTS_DIR = "plots"
VERDICTS = ("reproduced", "partly", "not")


@dataclass
class Context:
    """How a study runs: where it writes, quick or full, which seeds, whether to show progress."""

    out: Path
    """The study's output folder (a staging folder while the study runs)."""
    quick: bool
    """CI mode: fewer steps/sizes, same output structure."""
    seeds: list[int]
    """One training seed per repetition; data sets are regenerated per seed where they are synthetic."""
    show_progress: bool = True
    command: str = ""
    """The command line that reproduces this output (written into results.md)."""
    jobs: int = 1
    """Worker processes for studies whose fits are independent (``frontier-minilm``); one torch thread each."""

    def pick(self, full: Any, quick: Any) -> Any:
        """``quick`` in quick mode, ``full`` otherwise."""
        return quick if self.quick else full

    def log(self, message: str) -> None:
        if self.show_progress:
            print(message, file=sys.stderr, flush=True)

    @property
    def plots(self) -> Path:
        path = self.out / PLOTS_DIR
        path.mkdir(parents=True, exist_ok=True)
        return path


@dataclass
class Trained:
    """A model fitted by :func:`train`, with what it cost."""

    sae: SparseAutoencoder
    seconds: float
    """Wall time of the optimisation loop alone."""
    steps: int
    rows_seen: int
    """``steps × batch_size``: the rows the forward/backward passes processed (for analytic FLOPs)."""


def train(
    kind: str,
    x_train: np.ndarray,
    model: dict[str, Any],
    train_opts: dict[str, Any],
    seed: int,
    ctx: Context | None,
) -> Trained:
    """Fit ``kind`` on normalised rows ``x_train [N, d_in]`` with the project's loop, seeded like
    ``train_run`` (``torch.manual_seed(seed)`` before the model is built). No run folder is written:
    the studies evaluate in memory, so hundreds of small fits stay cheap. ``ctx`` None: no progress bar
    (a worker process of a study)."""
    opts = {"epochs": None, **train_opts, "seed": seed}
    cfg = TrainConfig.from_dict(opts)
    torch.manual_seed(seed)
    sae = build(make_config(kind, d_in=int(x_train.shape[1]), **model))
    x = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix="sparsecodes-reproduce-") as work:
        start = time.perf_counter()
        history = fit(sae, x, cfg, Path(work), DistInfo(), show_progress=ctx is not None and ctx.show_progress)
        seconds = time.perf_counter() - start
    sae.eval()
    steps = len(range(history.step[-1] + 1)) if history.step else 0
    return Trained(sae, seconds, steps, steps * min(cfg.batch_size, len(x)))


# -- aggregation -------------------------------------------------------------------------------------


def summary(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n", "values"}`` over seeds. ``std`` is the sample std (ddof 1), 0 for one value.
    Non-finite values (an undefined correlation) are left out of mean/std and kept as None in ``values``."""
    raw = [None if v is None or not math.isfinite(float(v)) else float(v) for v in values]
    ok = [v for v in raw if v is not None]
    mean = float(np.mean(ok)) if ok else None
    std = float(np.std(ok, ddof=1)) if len(ok) > 1 else (0.0 if ok else None)
    return {"mean": mean, "std": std, "n": len(ok), "values": raw}


def aggregate(records: list[dict[str, Any]], keys: Sequence[str], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Group per-seed ``records`` by ``keys`` (first-appearance order) and summarise each metric over
    the group's seeds: one output row per distinct key, with ``{metric: summary(...)}``."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    rows = []
    for key, members in groups.items():
        row: dict[str, Any] = dict(zip(keys, key, strict=True))
        for m in metrics:
            row[m] = summary(r.get(m) for r in members)
        rows.append(row)
    return rows


def mean_of(row: dict[str, Any], metric: str) -> float:
    """The seed-mean of ``metric`` in an aggregated row (NaN when undefined)."""
    value = row[metric]["mean"]
    return float("nan") if value is None else float(value)


def pearson(a: Sequence[float], b: Sequence[float]) -> float:
    """Pearson correlation; NaN when either side is constant (then no correlation is defined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) < 2 or np.ptp(a) < 1e-9 or np.ptp(b) < 1e-9:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


# -- tables ------------------------------------------------------------------------------------------


def pm(stat: dict[str, Any] | float | None, digits: int = 3) -> str:
    """``mean ± std`` of a summary (or a plain number), ``n/a`` when undefined."""
    if stat is None:
        return "n/a"
    if isinstance(stat, dict):
        if stat["mean"] is None:
            return "n/a"
        return f"{stat['mean']:.{digits}g} ± {stat['std']:.2g}" if stat["n"] > 1 else f"{stat['mean']:.{digits}g}"
    if isinstance(stat, float) and not math.isfinite(stat):
        return "n/a"
    return f"{stat:.{digits}g}" if isinstance(stat, float) else str(stat)


@dataclass
class Table:
    """A results table: ``columns`` (header, row key, digits) and aggregated ``rows``."""

    title: str
    columns: list[tuple[str, str, int]]
    rows: list[dict[str, Any]]
    note: str = ""

    def markdown(self) -> str:
        head = "| " + " | ".join(c[0] for c in self.columns) + " |"
        rule = "|" + "|".join("---" for _ in self.columns) + "|"
        body = ["| " + " | ".join(pm(r.get(key), d) for _, key, d in self.columns) + " |" for r in self.rows]
        lines = [f"### {self.title}", "", head, rule, *body]
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "columns": [c[1] for c in self.columns], "rows": self.rows}


# -- the study's output ------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """What a study hands back to be written as ``results.json`` and ``results.md``."""

    name: str
    claim: str
    setup: str
    """One paragraph: data, models, hyperparameters, what each number means."""
    tables: list[Table]
    verdict: str
    reason: str
    criterion: str
    """The rule the verdict follows, stated before the numbers are known."""
    plots: list[str] = field(default_factory=list)
    """File names under ``plots/``."""
    settings: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def write_results(result: StudyResult, ctx: Context, seconds: float) -> None:
    """``results.json`` (everything, machine-readable) and ``results.md`` (tables, plots, verdict)."""
    doc = {
        "study": result.name,
        "claim": result.claim,
        "setup": result.setup,
        "command": ctx.command,
        "quick": ctx.quick,
        "seeds": ctx.seeds,
        "settings": result.settings,
        "tables": {t.title: t.to_dict() for t in result.tables},
        "verdict": {"status": result.verdict, "reason": result.reason, "criterion": result.criterion},
        "plots": [f"{PLOTS_DIR}/{p}" for p in result.plots],
        "wall_seconds": round(seconds, 2),
        **result.extra,
    }
    write_json(ctx.out / RESULTS_JSON, _finite_or_none(doc))
    lines = [
        f"# Reproduction: {result.name}",
        "",
        f"**Claim.** {result.claim}",
        "",
        f"**Command.** `{ctx.command}` ({'quick mode, ' if ctx.quick else ''}seeds {ctx.seeds}; "
        f"{seconds:.0f} s wall)",
        "",
        f"**Setup.** {result.setup}",
        "",
        *(part for t in result.tables for part in (t.markdown(), "")),
        *(f"![{p}]({PLOTS_DIR}/{p})\n" for p in result.plots),
        f"**Verdict: {result.verdict}.** {result.reason}",
        "",
        f"*Criterion:* {result.criterion}",
        "",
    ]
    (ctx.out / RESULTS_MD).write_text("\n".join(lines))


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: undefined numbers become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite_or_none(obj.item())
    return obj


def save_figure(fig: plt.Figure, ctx: Context, name: str) -> str:
    fig.tight_layout()
    fig.savefig(ctx.plots / name, dpi=110)
    plt.close(fig)
    return name


def errorbar(ax: plt.Axes, rows: list[dict[str, Any]], x: str, y: str, label: str, **kw: Any) -> None:
    """Plot ``y`` against ``x`` (either a row key or a summary) with the seeds' std as error bars."""

    def value(r: dict[str, Any], key: str) -> tuple[float, float]:
        v = r[key]
        if isinstance(v, dict):
            return (float("nan") if v["mean"] is None else v["mean"]), (v["std"] or 0.0)
        return float(v), 0.0

    xs, xe = zip(*(value(r, x) for r in rows), strict=True)
    ys, ye = zip(*(value(r, y) for r in rows), strict=True)
    ax.errorbar(xs, ys, xerr=xe, yerr=ye, marker="o", capsize=3, label=label, **kw)


def write_summary(path: Path, results: dict[str, Any]) -> None:
    """For ``all``: one index file naming each study's verdict."""
    path.write_text(json.dumps(results, indent=2))

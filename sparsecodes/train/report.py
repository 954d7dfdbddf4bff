"""Plots and ``report.md`` for a run: what a person looks at to judge it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from sparsecodes.bundle import PLOTS_DIR
from sparsecodes.train.config import RunConfig
from sparsecodes.train.run import REPORT_FILE

if TYPE_CHECKING:
    from sparsecodes.train.evaluate import EvalResult
    from sparsecodes.train.trainer import History

SUMMARY_KEYS = (
    "mse",
    "fvu",
    "l0_mean",
    "l0_std",
    "dead_fraction",
    "probe_accuracy",
    "k_hat_mean",
    "ad_mean",
    "ad_fixed_mean",
)


def write_report(run_dir: Path, cfg: RunConfig, result: EvalResult, history: History) -> Path:
    plots = run_dir / PLOTS_DIR
    plots.mkdir(exist_ok=True)
    made = [
        plot_loss(history, plots / "loss.png"),
        plot_l0_hist(result.metrics, plots / "active_dims.png"),
        plot_activity(result.metrics, plots / "activity.png"),
    ]
    if cfg.input_shape:
        made.append(plot_reconstructions(result, cfg, plots / "reconstructions.png"))
    if "by_group" in result.metrics:
        made.append(plot_dims(result, plots / "dims_by_group.png"))
    lines = [
        f"# Run report: {cfg.kind} on {cfg.data.get('name', 'data')}",
        "",
        "## Held-out metrics",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(result.metrics[k])} |" for k in SUMMARY_KEYS if k in result.metrics]
    if "truncation" in result.metrics:
        t = result.metrics["truncation"]
        lines += [
            "",
            "## Truncation (SOSAE)",
            "",
            f"Cut point K = {t['cut_point']} of d_sae = {cfg.model['d_sae']} (activity threshold {cfg.model.get('cut_threshold')}); "
            f"mse full {t['mse_full']:.5g}, truncated {t['mse_truncated']:.5g} "
            f"(relative change {t['relative_mse_change']:.3%}); encoder FLOPs/row "
            f"{t['flops_full']['encoder']} → {t['flops_truncated']['encoder']}.",
        ]
    if "by_group" in result.metrics:
        groups = result.metrics["by_group"]
        cols = [c for c in groups[0] if c != "group"]
        lines += [
            "",
            "## By group",
            "",
            "| group | " + " | ".join(cols) + " |",
            "|---" * (len(cols) + 1) + "|",
        ]
        lines += ["| " + " | ".join([str(g["group"])] + [_fmt(g[c]) for c in cols]) + " |" for g in groups]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({PLOTS_DIR}/{p.name})" for p in made if p is not None]
    lines += ["", "## Configuration", "", "```json", _json(cfg.to_dict()), "```", ""]
    path = run_dir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _json(d: dict[str, Any]) -> str:
    import json

    d = dict(d)
    d["normalization"] = {**d["normalization"], "mean": f"[{len(d['normalization']['mean'])} values]"}
    return json.dumps(d, indent=2)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(history: History, path: Path) -> Path:
    names = [k for k in history.parts if k not in ("l0", "k_hat")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name in names:
        vals = np.asarray(history.parts[name])
        if np.all(vals > 0):
            axes[0].plot(history.step, vals, label=name)
    axes[0].set(xlabel="step", ylabel="loss part", yscale="log", title="Loss")
    axes[0].legend(fontsize=8)
    for name in ("l0", "k_hat"):
        if name in history.parts:
            axes[1].plot(history.step, history.parts[name], label=name)
    axes[1].set(xlabel="step", ylabel="active latents", title="Training L0")
    axes[1].legend(fontsize=8)
    return _save(fig, path)


def plot_l0_hist(m: dict[str, Any], path: Path) -> Path:
    counts = np.asarray(m["l0_hist"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.bar(np.arange(len(counts)), counts, width=1.0)
    ax.axvline(m["l0_mean"], color="k", ls="--", label=f"mean {m['l0_mean']:.2f}")
    ax.set(xlabel="active latents per row (L0)", ylabel="rows", title="Active dimensions (held out)")
    ax.legend()
    return _save(fig, path)


def plot_activity(m: dict[str, Any], path: Path) -> Path:
    act = np.asarray(m["activity"])
    fig, ax = plt.subplots(figsize=(8, 3.4))
    ax.bar(np.arange(len(act)), act, width=1.0)
    if "truncation" in m:
        ax.axvline(
            m["truncation"]["cut_point"] - 0.5,
            color="r",
            ls="--",
            label=f"cut point K={m['truncation']['cut_point']}",
        )
        ax.legend()
    ax.set(xlabel="latent position", ylabel="share of rows active", title="Per-position activity")
    return _save(fig, path)


def plot_reconstructions(result: EvalResult, cfg: RunConfig, path: Path, n: int = 8) -> Path | None:
    shape = tuple(cfg.input_shape or ())
    if len(shape) not in (2, 3):
        return None
    enc = result.heldout
    n = min(n, len(enc.x))
    fig, axes = plt.subplots(2, n, figsize=(1.4 * n, 3.0))
    for i in range(n):
        for row, img in enumerate((enc.x[i], enc.x_hat[i])):
            a = img.reshape(shape)
            if a.ndim == 3:  # CHW → HWC, rescaled per image for display
                a = np.transpose(a, (1, 2, 0))
                a = (a - a.min()) / max(np.ptp(a), 1e-8)
            axes[row, i].imshow(a, cmap=None if a.ndim == 3 else "gray")
            axes[row, i].axis("off")
        axes[1, i].set_title(f"L0={int((enc.code[i] != 0).sum())}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    fig.suptitle("Held-out inputs (top) and reconstructions (bottom), normalised units", fontsize=9)
    return _save(fig, path)


def plot_dims(result: EvalResult, path: Path) -> Path:
    groups = result.metrics["by_group"]
    fig, ax = plt.subplots(figsize=(6, 4))
    x = [g.get("true_dim", g["group"]) for g in groups]
    for key, label in (("l0_mean", "served L0"), ("k_hat_mean", "k̂"), ("ad_mean", "AD (two-means)")):
        if key in groups[0]:
            ax.plot(x, [g[key] for g in groups], "o-", label=label)
    if "true_dim" in groups[0]:
        lim = [0, max(max(x), max(g["l0_mean"] for g in groups)) * 1.1]
        ax.plot(lim, lim, "k:", label="y = true dim")
    ax.set(
        xlabel="true intrinsic dimension" if "true_dim" in groups[0] else "group",
        ylabel="active latents",
        title="Active latents by group",
    )
    ax.legend()
    return _save(fig, path)

"""PNG plots of an evaluation (matplotlib, Agg backend, no global pyplot state).

Each function draws one figure from arrays or an :func:`svdh.evaluate.metrics.evaluate_run`
result and writes it to ``path``. :func:`write_plots` draws every plot a run has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
_BLUE, _ORANGE, _GREY, _RED = "#1f5fa8", "#d9822b", "#777777", "#b8322a"


def _figure(w: float = 5.2, h: float = 4.4) -> Figure:
    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, format="png")
    return p


def _fmt(x: Any, nd: int = 2) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{nd}f}"


def pred_vs_true(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    *,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    title: str = "",
    unit: str = "SvdH score",
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Predicted against true score, the identity line, and intervals where given."""
    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    fig = _figure()
    ax = fig.add_subplot()
    # Axes fit the scores, not the intervals: an interval wider than the data (too few
    # calibration images) runs out of the frame instead of squashing every point into a corner.
    top = max(float(np.max(t, initial=1)), float(np.max(p, initial=1))) * 1.08
    if lo is not None and hi is not None:
        ax.vlines(
            t,
            lo,
            hi,
            color=_BLUE,
            alpha=0.18,
            lw=1.2,
            label="90% interval"
            if metrics is None
            else f"{100 * (metrics.get('interval', {}).get('level') or 0.9):.0f}% interval",
        )
    ax.plot([0, top], [0, top], color=_GREY, ls="--", lw=1, label="perfect agreement")
    ax.scatter(t, p, s=14, color=_BLUE, alpha=0.7, edgecolor="none", label="image")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel(f"True {unit} (reader)")
    ax.set_ylabel(f"Predicted {unit}")
    if metrics:
        ax.text(
            0.03,
            0.97,
            f"n = {metrics.get('n')}\nPCC = {_fmt(metrics.get('pcc'))}\n"
            f"RMSE = {_fmt(metrics.get('rmse'), 1)}\nMAE = {_fmt(metrics.get('mae'), 1)}",
            transform=ax.transAxes,
            va="top",
            fontsize=9,
            bbox={"boxstyle": "round", "fc": "white", "ec": "#cccccc"},
        )
    ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title(title or "Predicted against true score", fontsize=11)
    ax.grid(alpha=0.25)
    return _save(fig, path)


def bland_altman_plot(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    path: str | Path,
    *,
    ba: dict[str, float] | None = None,
    title: str = "",
    unit: str = "SvdH score",
) -> Path:
    """Difference (prediction - truth) against the mean of both, bias and 95% limits of agreement."""
    from svdh.evaluate.metrics import bland_altman

    t, p = np.asarray(y_true, float), np.asarray(y_pred, float)
    ba = ba or bland_altman(t, p)
    fig = _figure(6.0, 4.2)
    ax = fig.add_subplot()
    ax.scatter((t + p) / 2, p - t, s=14, color=_BLUE, alpha=0.7, edgecolor="none")
    ax.axhline(0, color=_GREY, lw=0.8)
    ax.axhline(ba["bias"], color=_ORANGE, lw=1.5)
    for key in ("loa_low", "loa_high"):
        ax.axhline(ba[key], color=_RED, ls="--", lw=1.2)
    # Labels inside the axes at the right edge (x in axes units, y in data units).
    tr = ax.get_yaxis_transform()
    box = {"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1}
    for y, text, va, color in (
        (ba["bias"], f"bias {ba['bias']:+.1f}", "bottom", _ORANGE),
        (ba["loa_high"], f"+1.96 SD: {ba['loa_high']:+.1f}", "bottom", _RED),
        (ba["loa_low"], f"-1.96 SD: {ba['loa_low']:+.1f}", "top", _RED),
    ):
        ax.text(0.99, y, text, transform=tr, va=va, ha="right", color=color, fontsize=9, bbox=box)
    ax.set_xlabel(f"Mean of true and predicted {unit}")
    ax.set_ylabel("Predicted - true")
    ax.set_title(title or "Bland-Altman agreement", fontsize=11)
    ax.grid(alpha=0.25)
    return _save(fig, path)


def confusion_plot(
    cm: Sequence[Sequence[int]],
    labels: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
    subtitle: str = "",
) -> Path:
    """Confusion matrix: counts in the cells, colour = share of the true class's row."""
    m = np.asarray(cm, float)
    rows = m.sum(axis=1, keepdims=True)
    share = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    k = len(labels)
    fig = _figure(1.1 + 0.62 * k, 0.9 + 0.62 * k)
    ax = fig.add_subplot()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if m[i, j]:
                ax.text(
                    j,
                    i,
                    f"{int(m[i, j])}",
                    ha="center",
                    va="center",
                    fontsize=9,
                    color="white" if share[i, j] > 0.55 else "black",
                )
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("Predicted severity class (score range)")
    ax.set_ylabel("True severity class")
    fig.colorbar(im, ax=ax, shrink=0.75, label="share of true class")
    ax.set_title((title or "Confusion matrix") + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    return _save(fig, path)


def error_by_range_plot(
    by_range: list[dict[str, Any]],
    path: str | Path,
    *,
    sdc: float | None = None,
    title: str = "",
    xlabel: str = "True score range (severity class)",
    ylabel: str = "Score units",
) -> Path:
    """Mean absolute error and bias per true score range (severity class, or age band)."""
    labels = [r["range"] for r in by_range]
    x = np.arange(len(labels))
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [r["mae"] for r in by_range], 0.4, color=_BLUE, label="MAE")
    ax.bar(x + 0.2, [r["bias"] for r in by_range], 0.4, color=_ORANGE, label="bias (pred - true)")
    for xi, r in zip(x, by_range, strict=True):
        ax.text(
            xi - 0.2, r["mae"], f"n={r['n']}", ha="center", va="bottom", fontsize=7, color=_GREY
        )
    if sdc:
        ax.axhline(sdc, color=_RED, ls=":", lw=1, label=f"SDC = {sdc:g}")
    ax.axhline(0, color=_GREY, lw=0.8)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8, frameon=False)
    ax.set_title(title or "Error by score range", fontsize=11)
    ax.grid(axis="y", alpha=0.25)
    return _save(fig, path)


def coverage_plot(interval: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Coverage reached by the conformal intervals per true score range, against the target."""
    rows = interval.get("by_range") or []
    level = float(interval.get("level", 0.9))
    labels = [r["range"] for r in rows]
    x = np.arange(len(labels))
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot()
    ax.bar(x, [r["coverage"] for r in rows], 0.6, color=_BLUE, label="coverage reached")
    for xi, r in zip(x, rows, strict=True):
        # Inside the bar's foot, clear of the target line: mean half-width and count.
        ax.text(
            xi,
            0.03,
            f"±{r['mean_width'] / 2:.1f}\nn={r['n']}",
            ha="center",
            va="bottom",
            fontsize=7,
            color="white",
        )
    ax.axhline(level, color=_RED, ls="--", lw=1.2, label=f"target {100 * level:.0f}%")
    ax.set_ylim(0, 1.3)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("True score range (severity class)")
    ax.set_ylabel("Share of true scores inside the interval")
    overall = interval.get("coverage")
    ax.legend(loc="upper left", fontsize=8, frameon=False, ncol=2)
    sub = (
        f"overall {100 * overall:.1f}%, {interval.get('method', '')} conformal"
        if overall is not None
        else ""
    )
    ax.set_title(
        (title or "Interval coverage") + (f"\n{sub}; ± mean half-width in bars" if sub else ""),
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.25)
    return _save(fig, path)


def class_distribution_plot(
    counts: Sequence[int], labels: Sequence[str], path: str | Path, *, title: str = ""
) -> Path:
    """Images per true severity class (the imbalance a reader should know about)."""
    fig = _figure(5.6, 3.4)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x, counts, color=_BLUE)
    for xi, c in zip(x, counts, strict=True):
        ax.text(xi, c, str(int(c)), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("True score range (severity class)")
    ax.set_ylabel("Images")
    ax.set_title(title or "Score distribution", fontsize=11)
    ax.grid(axis="y", alpha=0.25)
    return _save(fig, path)


def write_plots(run: Any, metrics: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Every plot of one evaluated run into ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    df = run.oof
    t, p = df["y_true"].to_numpy(float), df["y_pred"].to_numpy(float)
    unit = "bone age (months)" if run.task == "boneage" else "SvdH score"
    name = run.name
    iv = metrics.get("interval") or {}
    lo, hi = _oof_intervals(run, iv, t, p)
    plots = {
        "pred_vs_true": pred_vs_true(
            t,
            p,
            out / "pred_vs_true.png",
            lo=lo,
            hi=hi,
            unit=unit,
            metrics=metrics,
            title=f"{name}: predicted against true (out-of-fold)",
        ),
        "bland_altman": bland_altman_plot(
            t,
            p,
            out / "bland_altman.png",
            ba=metrics.get("bland_altman"),
            unit=unit,
            title=f"{name}: Bland-Altman",
        ),
    }
    plots.update(_range_plots(name, metrics, iv, out))
    pm = metrics.get("patient")
    if pm:
        from svdh.evaluate.metrics import patient_table

        pt = patient_table(df)
        plots["patient_pred_vs_true"] = pred_vs_true(
            pt["y_true"],
            pt["y_pred"],
            out / "patient_pred_vs_true.png",
            metrics=pm,
            unit=unit,
            title=f"{name}: per patient (both hands)",
        )
    return plots


def _oof_intervals(
    run: Any, iv: dict[str, Any], t: np.ndarray, p: np.ndarray
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The cross-fit intervals the metrics used, to draw (None without intervals, or for a bare
    CSV, whose metrics used pseudo-folds)."""
    from svdh.evaluate.metrics import crossfit_intervals

    df = run.oof
    if not iv or df["fold"].nunique() < 2:
        return None, None
    return crossfit_intervals(
        t,
        p,
        df["fold"].to_numpy(),
        alpha=iv["alpha"],
        bins=run.bins,
        method=iv.get("method", "mondrian"),
    )


def _range_plots(
    name: str, metrics: dict[str, Any], iv: dict[str, Any], out: Path
) -> dict[str, Path]:
    """Error by score range, the confusion matrix and interval coverage, where present."""
    plots: dict[str, Path] = {}
    if metrics.get("by_range"):
        plots["error_by_range"] = error_by_range_plot(
            metrics["by_range"],
            out / "error_by_range.png",
            sdc=metrics.get("sdc"),
            title=f"{name}: error by score range",
        )
    if metrics.get("boneage"):
        plots["error_by_age"] = error_by_range_plot(
            [{**r, "range": r["band"]} for r in metrics["boneage"]["by_band"]],
            out / "error_by_age.png",
            title=f"{name}: error by true bone age",
            xlabel="True bone age (3-year bands)",
            ylabel="Months",
        )
    if metrics.get("confusion"):
        plots["confusion"] = confusion_plot(
            metrics["confusion"],
            metrics["class_labels"],
            out / "confusion.png",
            title=f"{name}: severity classes",
            subtitle=f"classes from {metrics.get('classes_from', '')}",
        )
    if iv.get("by_range"):
        plots["coverage"] = coverage_plot(
            iv, out / "coverage.png", title=f"{name}: interval coverage"
        )
    return plots

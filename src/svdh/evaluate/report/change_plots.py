"""Plots of change between visits: the cumulative probability plot and patient trajectories."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from svdh.evaluate.report.plots import _BLUE, _GREY, _ORANGE, _RED, _figure, _fmt, _save

CUMULATIVE = "Change per patient: cumulative probability plot"
TRAJECTORIES = "Per-patient trajectories over visits"


def cumulative_probability_plot(
    true_change: np.ndarray | None,
    pred_change: np.ndarray,
    path: str | Path,
    *,
    threshold: float | None = None,
    lo: np.ndarray | None = None,
    hi: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Each patient's change score against its cumulative probability (the standard picture
    of trial radiographic outcomes), true and predicted, each sorted on its own; the
    predicted changes carry their intervals where given."""
    p = np.asarray(pred_change, float)
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    n = len(p)
    x = (np.arange(n) + 0.5) / max(n, 1) * 100
    order = np.argsort(p, kind="stable")
    if lo is not None and hi is not None:
        ax.fill_between(
            x, np.asarray(lo)[order], np.asarray(hi)[order], color=_ORANGE, alpha=0.18, lw=0,
            label="interval of the predicted change",
        )  # fmt: skip
    ax.plot(x, p[order], "o-", color=_ORANGE, ms=3, lw=1.2, label="predicted change")
    if true_change is not None and np.isfinite(true_change).any():
        t = np.sort(np.asarray(true_change, float))
        ax.plot(x, t, "s-", color=_BLUE, ms=3, lw=1.2, label="true change")
    if threshold is not None:
        ax.axhline(threshold, color=_RED, ls="--", lw=1, label=f"SDC threshold {threshold:g}")
    ax.axhline(0, color=_GREY, lw=0.8)
    ax.set_xlabel("cumulative probability (% of patients)")
    ax.set_ylabel("change in SvdH score, both hands (0-280)")
    ax.set_xlim(0, 100)
    ax.set_title(title or "Change per patient", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def trajectories_plot(
    scores: pd.DataFrame, path: str | Path, *, max_patients: int = 12, title: str = ""
) -> Path:
    """Patient scores (0-280) over visits, true (solid) and predicted (dashed), for the
    patients with the most true (else predicted) change; ``scores`` is
    :func:`svdh.evaluate.change.visit_scores` of film 1."""
    from svdh.core.visits import is_date, order_visits, years_between

    fig = _figure(6.0, 4.4)
    ax = fig.add_subplot()
    has_true = "y_P_true" in scores.columns and scores["y_P_true"].notna().any()
    col = "y_P_true" if has_true else "y_P_pred"
    spans = scores.groupby("patient_id")[col].agg(lambda s: float(s.max() - s.min()))
    keep = list(spans.sort_values(ascending=False).index[:max_patients])
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    dated = bool(len(scores)) and is_date(str(scores["visit"].iloc[0]))
    labels = [] if dated else order_visits(scores.loc[scores["patient_id"].isin(keep), "visit"])
    for k, pid in enumerate(keep):
        g = scores[scores["patient_id"] == pid]
        order = order_visits(g["visit"])
        g = g.set_index("visit").loc[order]
        x = [years_between(order[0], v) if dated else labels.index(v) for v in order]
        c = cmap(k % 20)
        if has_true:
            ax.plot(x, g["y_P_true"], "-o", color=c, ms=3, lw=1.2)
        ax.plot(x, g["y_P_pred"], "--^", color=c, ms=3, lw=1.0, alpha=0.9)
    if dated:
        ax.set_xlabel("years since the first visit")
    else:
        ax.set_xticks(range(len(labels)), labels, fontsize=8)
        ax.set_xlabel("visit")
    ax.set_ylabel("SvdH score, both hands (0-280)")
    ax.plot([], [], "-o", color=_GREY, label="true")
    ax.plot([], [], "--^", color=_GREY, label="predicted")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    ax.set_title(title or f"{len(keep)} patients with the most change", fontsize=10)
    return _save(fig, path)


def change_plots(run: Any, metrics: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """The change plots of an evaluated run with visits ({} without pairs)."""
    from svdh.evaluate.change import (
        ChangeCalibration,
        change_pairs,
        crossfit_change,
        visit_scores,
    )

    m = metrics.get("change")
    if not m:
        return {}
    out = Path(out_dir)
    pairs = change_pairs(run.oof)
    pairs = pairs[np.isfinite(pairs["dy_P_pred"])]
    t, p = pairs["dy_P_true"].to_numpy(float), pairs["dy_P_pred"].to_numpy(float)
    thr = m["progression"]["threshold"]
    cal = ChangeCalibration.from_dict(m["calibration"])
    lo = hi = None
    if "fold" in pairs.columns and pairs["fold"].nunique() >= 2:
        cf = crossfit_change(t, p, pairs["fold"], alpha=cal.alpha, threshold=thr)
        lo, hi = cf["lo"], cf["hi"]
    pm = m["patient"]
    sub = f"PCC {_fmt(pm['pcc']['value'])}, model SDC {_fmt(m['model_sdc']['known_change']['value'], 1)}"
    vs = visit_scores(run.oof)
    return {
        CUMULATIVE: cumulative_probability_plot(
            t,
            p,
            out / "change_cumulative.png",
            threshold=thr,
            lo=lo,
            hi=hi,
            title=f"{run.name}: change per patient (out-of-fold; {sub})",
        ),  # fmt: skip
        TRAJECTORIES: trajectories_plot(
            vs[vs["film"] == 1],
            out / "change_trajectories.png",
            title=f"{run.name}: patients with the most change (out-of-fold)",
        ),  # fmt: skip
    }


def _v(fig: dict[str, Any] | None, nd: int = 2) -> str:
    if not fig:
        return "n/a"
    lo, hi = fig.get("ci", [None, None])
    ci = f" ({_fmt(lo, nd)} to {_fmt(hi, nd)})" if lo is not None and np.isfinite(lo) else ""
    return _fmt(fig.get("value"), nd) + ci


def change_rows(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of the report's change table: figure, out-of-fold, held-out test (CIs over patients)."""
    m = metrics.get("change")
    if not m:
        return []
    cols = [("oof", m), ("test", m.get("test"))]

    def row(label: str, get: Any, nd: int = 2) -> dict[str, str]:
        out = {"figure": label}
        for k, mm in cols:
            try:
                out[k] = get(mm, nd) if mm else ""
            except (KeyError, TypeError):
                out[k] = "n/a"
        return out

    thr = m["progression"]["threshold"]
    twice = "changes_measured_twice"
    return [
        row("patients / pairs", lambda x, nd: f"{x['n_patients']} / {x['n_pairs']}"),
        row("PCC of change", lambda x, nd: _v(x["patient"]["pcc"], 3)),
        row("ICC(2,1) of change", lambda x, nd: _v(x["patient"]["icc"], 3)),
        row("RMSE of change", lambda x, nd: _v(x["patient"]["rmse"])),
        row(
            "mean change true / predicted",
            lambda x, nd: f"{_fmt(x['patient']['mean_true'])} / {_fmt(x['patient']['mean_pred'])}",
        ),
        row("model SDC from known change", lambda x, nd: _v(x["model_sdc"]["known_change"])),
        row("model SDC, changes measured twice", lambda x, nd: _v(x["model_sdc"][twice]["sdc"])),
        row("readers' SDC (individual, 0-280)", lambda x, nd: "4-6"),
        row(f"progression (> {thr:g}) AUC", lambda x, nd: _v(x["progression"]["auc"], 3)),
        row("sensitivity", lambda x, nd: _v(x["progression"]["sensitivity"])),
        row("specificity", lambda x, nd: _v(x["progression"]["specificity"])),
        row("non-progressors, true", lambda x, nd: _v(x["progression"]["non_progressors_true"])),
        row(
            "non-progressors, predicted",
            lambda x, nd: _v(x["progression"]["non_progressors_pred"]),
        ),
        row(
            f"{100 * m['interval']['level']:.0f}% change interval: coverage / width",
            lambda x, nd: (
                f"{_fmt(x['interval']['coverage'], 3)} / {_fmt(x['interval']['mean_width'], 1)}"
            ),
        ),
    ]

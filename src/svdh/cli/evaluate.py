"""``svdh evaluate``, ``svdh ensemble``, ``svdh report`` and ``svdh compare``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import typer

from svdh.core.errors import BadConfigError


class Format(StrEnum):
    table = "table"
    json = "json"


class Method(StrEnum):
    stacking = "stacking"
    mean = "mean"
    weighted = "weighted"
    nnls = "nnls"


class ClassMeta(StrEnum):
    multinomial = "multinomial"
    ordinal = "ordinal"


class Conformal(StrEnum):
    mondrian = "mondrian"
    absolute = "absolute"


class Split(StrEnum):
    oof = "oof"
    test = "test"


def _alpha(level: float) -> float:
    if not 0 < level < 1:
        raise BadConfigError(
            f"--level must lie between 0 and 1 (e.g. 0.9 for 90% intervals), got {level}"
        )
    return round(1 - level, 12)  # 1 - 0.8 is 0.19999999999999996 in binary


def _n(x: Any, nd: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return "–" if v != v or v in (float("inf"), float("-inf")) else f"{v:.{nd}f}"


def _console():
    """A rich console; wide when writing to a file or pipe (rich would assume 80 columns)."""
    from rich.console import Console

    con = Console()
    return con if con.is_terminal else Console(width=160)


def _figures_table(title: str, columns: dict[str, dict[str, Any]]):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("figure")
    for name in columns:
        t.add_column(name, justify="right")
    ms = list(columns.values())

    def row(label: str, fn) -> None:
        t.add_row(label, *(fn(m) for m in ms))

    row("n", lambda m: str(m.get("n", "–")))

    def ci(m: dict[str, Any]) -> str:
        lo, hi = (m.get("pcc_ci") or [None, None])[:2]
        return f"({_n(lo, 2)}–{_n(hi, 2)})" if _n(lo) != "–" else "(CI n/a)"

    row("PCC (95% CI)", lambda m: f"{_n(m.get('pcc'))} {ci(m)}")
    for key, label in (
        ("rmse", "RMSE"),
        ("mae", "MAE"),
        ("r2", "R²"),
        ("ccc", "Lin's CCC"),
        ("icc", "ICC(2,1)"),
    ):
        row(label, lambda m, k=key: _n(m.get(k)))
    row(
        "Bland-Altman bias (LoA)",
        lambda m: (
            (
                f"{_n(m['bland_altman']['bias'], 2)} ({_n(m['bland_altman']['loa_low'], 1)} to "
                f"{_n(m['bland_altman']['loa_high'], 1)})"
            )
            if m.get("bland_altman")
            else "–"
        ),
    )
    row(
        "within SDC",
        lambda m: f"{_n(100 * m['within_sdc'], 1)}% (±{m['sdc']:g})" if "within_sdc" in m else "–",
    )
    if any("accuracy" in m for m in ms):
        for key, label in (
            ("accuracy", "class accuracy"),
            ("balanced_accuracy", "balanced accuracy"),
            ("class_mae", "class MAE (steps)"),
            ("class_rmse", "class RMSE (steps)"),
            ("qwk", "quadratic kappa"),
        ):
            row(label, lambda m, k=key: _n(m.get(k)))
    if any(m.get("interval") for m in ms):
        row(
            "interval coverage",
            lambda m: (
                f"{_n(100 * m['interval']['coverage'], 1)}% of {_n(100 * m['interval'].get('level', 0.9), 0)}%"
                if m.get("interval")
                else "–"
            ),
        )
        row(
            "interval mean width",
            lambda m: _n(m["interval"]["mean_width"], 1) if m.get("interval") else "–",
        )
    return t


def print_boneage(m: dict[str, Any]) -> None:
    """Bone-age figures in months: overall, then the bias by 3-year band of true age."""
    from rich.table import Table

    con = _console()
    cols = {"out-of-fold": m["boneage"]}
    if m.get("test", {}).get("boneage"):
        cols["held-out test"] = m["test"]["boneage"]
    t = Table(title=f"{m.get('run', '')}: bone age (months)", title_justify="left")
    t.add_column("figure")
    for name in cols:
        t.add_column(name, justify="right")
    for key, label in (
        ("n", "n"),
        ("mae", "MAE (months)"),
        ("rmse", "RMSE (months)"),
        ("bias", "bias (months, predicted - true)"),
        ("pcc", "PCC"),
    ):
        t.add_row(label, *(str(c[key]) if key == "n" else _n(c.get(key), 2) for c in cols.values()))
    t.add_row("within 12 months", *(f"{_n(100 * c['within_12'], 1)}%" for c in cols.values()))
    if any(c.get("interval") for c in (m, m.get("test", {}))):
        t.add_row(
            "interval coverage",
            *(
                f"{_n(100 * src['interval']['coverage'], 1)}% of "
                f"{_n(100 * src['interval'].get('level', 0.9), 0)}%"
                if src.get("interval")
                else "–"
                for src in ([m, m["test"]] if len(cols) > 1 else [m])
            ),
        )
    con.print(t)
    for name, c in cols.items():
        b = Table(title=f"{name}: errors by true bone age (3-year bands)", title_justify="left")
        for col in ("band", "n", "MAE", "RMSE", "bias"):
            b.add_column(col, justify="right")
        for r in c["by_band"]:
            flag = " !" if abs(r["bias"]) > 12 else ""
            b.add_row(
                r["band"], str(r["n"]), _n(r["mae"], 1), _n(r["rmse"], 1), _n(r["bias"], 1) + flag
            )
        for sex, r in (c.get("by_sex") or {}).items():
            if r["n"]:
                b.add_row(sex, str(r["n"]), _n(r["mae"], 1), _n(r["rmse"], 1), _n(r["bias"], 1))
        con.print(b)
    if any(c["bands_over_limit"] for c in cols.values()):
        con.print("! a band whose bias exceeds 12 months")


def print_evaluation(m: dict[str, Any]) -> None:
    """Rich tables of an :func:`svdh.evaluate.metrics.evaluate_run` result."""
    from rich.table import Table

    con = _console()
    for w in m.get("warnings", []):
        con.print(f"[bold yellow]warning:[/] {w}")
    if m.get("boneage"):
        print_boneage(m)
        return
    cols: dict[str, dict[str, Any]] = {"model, per image (out-of-fold)": m}
    if "human" in m:
        if m["human"]["n"] != m["n"]:
            cols["model, images a second reader scored"] = m["human"]["model"]
        cols["second reader"] = m["human"]["reader2"]
    if "patient" in m:
        cols["per patient"] = m["patient"]
        if "human" in m["patient"]:
            cols["per patient, second reader"] = m["patient"]["human"]["reader2"]
    if "test" in m:
        cols["held-out test"] = m["test"]
    con.print(
        _figures_table(
            f"{m.get('run', '')}: {m.get('task', '')}, {m.get('score_scope', '')} scores", cols
        )
    )
    if m.get("by_range"):
        t = Table(title="errors by true score range", title_justify="left")
        for c in ("range", "n", "MAE", "RMSE", "bias", "within SDC", "interval coverage"):
            t.add_column(c, justify="right")
        cov = {r["class"]: r for r in (m.get("interval") or {}).get("by_range", [])}
        for r in m["by_range"]:
            c = cov.get(r["class"])
            t.add_row(
                r["range"],
                str(r["n"]),
                _n(r["mae"], 2),
                _n(r["rmse"], 2),
                _n(r["bias"], 2),
                f"{_n(100 * r['within_sdc'], 0)}%",
                f"{_n(100 * c['coverage'], 0)}%" if c else "–",
            )
        con.print(t)
    if m.get("confusion"):
        labels = m["class_labels"]
        t = Table(
            title=f"confusion matrix (rows: true class; columns: predicted, from {m.get('classes_from')})",
            title_justify="left",
        )
        t.add_column("true \\ pred")
        for lab in labels:
            t.add_column(lab, justify="right")
        for lab, row in zip(labels, m["confusion"], strict=True):
            t.add_row(lab, *(str(v) if v else "·" for v in row))
        con.print(t)
    if m.get("localisation"):
        loc = m["localisation"]
        t = Table(
            title=f"Grad-CAM localisation ({loc.get('n_images', '?')} images)", title_justify="left"
        )
        for c in ("measure", "model", "random map", "random map on hand"):
            t.add_column(c, justify="right")
        t.add_row(
            "mass on damaged joints",
            _n(loc.get("mass_on_damaged")),
            _n(loc.get("random_mass")),
            _n(loc.get("random_hand_mass")),
        )
        t.add_row(
            "pointing game",
            _n(loc.get("pointing_game")),
            _n(loc.get("random_pointing")),
            _n(loc.get("random_hand_pointing")),
        )
        con.print(t)
    if m.get("change"):
        _print_change(con, m)


def _print_change(con: Any, m: dict[str, Any]) -> None:
    """The pair figures (change between visits) as one table."""
    from rich.table import Table

    from svdh.evaluate.report.change_plots import change_rows

    t = Table(
        title="change between visits (per patient, both hands, 0-280; 95% CI over patients)",
        title_justify="left",
    )
    for c in ("figure", "out-of-fold", "held-out test"):
        t.add_column(c, justify="left" if c == "figure" else "right")
    for r in change_rows(m):
        t.add_row(r["figure"], r["oof"], r["test"])
    con.print(t)


def print_comparison(rows: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    numeric = ("n", "PCC (95% CI)", "RMSE", "MAE", "accuracy", "QWK")
    for c in ("run", "backbone", "init", "scheme", "task", *numeric):
        t.add_column(c, justify="right" if c in numeric else "left")
    for r in rows:
        t.add_row(
            r["name"],
            str(r["backbone"]),
            str(r["init"]),
            str(r["scheme"]),
            str(r["task"]),
            str(r["n"]),
            f"{r['pcc']} ({r['pcc_ci']})",
            r["rmse"],
            r["mae"],
            r["accuracy"] + ("†" if r["acc_binned"] else ""),
            r["qwk"],
        )
    con = _console()
    con.print(t)
    if any(r["acc_binned"] for r in rows):
        con.print("† accuracy of the predicted score binned into severity classes")


def evaluate(
    predictions: Path = typer.Argument(
        ..., help="A run directory, an ensemble directory, or a CSV with y_true,y_pred."
    ),
    fmt: Format = typer.Option(
        Format.table, "--format", help="table (terminal) or json (one object)."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write metrics.json and the PNG plots into this folder."
    ),
    sdc: float = typer.Option(5.0, "--sdc", help="Smallest detectable change, in score units."),
    level: float | None = typer.Option(
        None,
        "--level",
        help="Coverage the conformal intervals aim at "
        "(default: the ensemble's conformal.json, else 0.9).",
    ),
    conformal: Conformal | None = typer.Option(
        None,
        "--conformal",
        help="mondrian: widths per predicted score "
        "range; absolute: one width (default: conformal.json, else mondrian).",
    ),
    boot: int = typer.Option(
        1000, "--boot", help="Bootstrap resamples for the PCC confidence interval."
    ),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the bootstrap and of pseudo-folds for a bare CSV."
    ),
    scope: str | None = typer.Option(
        None,
        "--scope",
        help="hand or patient: the score range of a bare CSV "
        "(default: from a score_scope or side column, else patient).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="Task of a bare CSV: regression, classification, ordinal or boneage (months) "
        "(default: a task column; boneage where a male or boneage column is present).",
    ),
) -> None:
    """Evaluate predictions of a run, an ensemble or a CSV against the reader's scores.

    Agreement (PCC with a patient-bootstrap 95% CI, RMSE, MAE, R², Lin's CCC, ICC(2,1), Bland-Altman, share
    within the SDC, errors by score range), severity classes (accuracy, balanced accuracy, QWK, confusion
    matrix), conformal interval coverage, per patient (both hands summed) and a second reader side by side.
    A bone-age run or CSV gets months instead: MAE, RMSE, bias, and the bias by 3-year age band and by sex.
    """
    from svdh.evaluate.change import add_change
    from svdh.evaluate.metrics import evaluate_run
    from svdh.runs.layout import RunDir
    from svdh.runs.tables import load_predictions, write_json

    run = load_predictions(predictions, scope=scope, task=task)
    m = evaluate_run(
        run,
        sdc=sdc,
        alpha=None if level is None else _alpha(level),
        conformal_method=conformal.value if conformal else None,
        n_boot=boot,
        seed=seed,
    )
    add_change(m, run, sdc=sdc, n_boot=boot, seed=seed)  # visit pairs, where the run has them
    if out is not None:
        from svdh.evaluate.report.change_plots import change_plots
        from svdh.evaluate.report.plots import write_plots

        out.mkdir(parents=True, exist_ok=True)
        write_json(RunDir(out).metrics, m)
        write_plots(run, m, out)
        change_plots(run, m, out)
    if fmt is Format.json:
        from svdh.runs.tables import plain

        typer.echo(json.dumps(plain(m), allow_nan=False))
    else:
        print_evaluation(m)
        if out is not None:
            typer.echo(f"wrote {out / 'metrics.json'} and plots to {out}")


def ensemble(
    runs: list[Path] = typer.Argument(
        ..., help="Member run directories (same images, same folds)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Ensemble directory to write."),
    method: Method = typer.Option(
        Method.stacking,
        "--method",
        help="stacking (meta-learner, nested CV), mean, weighted (inverse OOF MSE), nnls.",
    ),
    class_meta: ClassMeta = typer.Option(
        ClassMeta.multinomial,
        "--class-meta",
        help="Meta-learner for class probabilities when every member is a class task.",
    ),
    level: float = typer.Option(0.9, "--level", help="Coverage of the conformal intervals."),
    conformal: Conformal = typer.Option(
        Conformal.mondrian, "--conformal", help="Conformal interval variant."
    ),
    ridge_alpha: float = typer.Option(
        1.0, "--ridge-alpha", help="L2 penalty of the stacking ridge."
    ),
    boot: int = typer.Option(1000, "--boot", help="Bootstrap resamples for confidence intervals."),
) -> None:
    """Combine runs into an ensemble: stacking, mean, inverse-MSE weights or NNLS.

    Stacking is evaluated by nested cross-validation over the members' folds, so its oof.csv is honest.
    Writes config.yaml, oof.csv (test.csv), metrics.json, meta_learner.json and conformal.json.
    """
    from svdh.evaluate.ensemble import build_ensemble
    from svdh.runs.tables import read_run

    d = build_ensemble(
        runs,
        out,
        method=method.value,
        class_meta=class_meta.value,
        alpha=_alpha(level),
        conformal_method=conformal.value,
        ridge_alpha=ridge_alpha,
        n_boot=boot,
    )
    m = read_run(d).metrics or {}
    rows = [{"name": f"ensemble ({method.value})", **m}]
    rows += [{"name": k, **v} for k, v in m.get("members", {}).items()]
    if m.get("baseline_mean"):
        rows.append({"name": "plain mean", **m["baseline_mean"]})
    from rich.table import Table

    t = Table(title=f"{d}: out-of-fold figures", title_justify="left")
    for c in ("", "PCC", "RMSE", "MAE", "accuracy", "QWK"):
        t.add_column(c, justify="right" if c else "left")
    for r in rows:
        t.add_row(
            r["name"],
            _n(r.get("pcc")),
            _n(r.get("rmse"), 2),
            _n(r.get("mae"), 2),
            _n(r.get("accuracy")),
            _n(r.get("qwk")),
        )
    _console().print(t)
    if m.get("verdict"):
        typer.echo(f"note: {m['verdict']}")
    iv = m.get("interval") or {}
    if iv:
        typer.echo(
            f"{_n(100 * iv['level'], 0)}% {iv['method']} conformal intervals: coverage "
            f"{_n(100 * iv['coverage'], 1)}% out-of-fold (cross-fit), mean width {_n(iv['mean_width'], 1)}"
        )


def report(
    runs: list[Path] = typer.Argument(..., help="Run and ensemble directories to report on."),
    out: Path = typer.Option(Path("report.html"), "--out", "-o", help="HTML file to write."),
    title: str | None = typer.Option(None, "--title", help="Title of the report."),
    sdc: float = typer.Option(5.0, "--sdc", help="Smallest detectable change, in score units."),
    worst: int = typer.Option(8, "--worst", help="Images in the gallery of largest errors."),
    boot: int = typer.Option(1000, "--boot", help="Bootstrap resamples for confidence intervals."),
) -> None:
    """Write one self-contained HTML report of runs and ensembles for a clinician.

    Data summary, comparison table, plots, Grad-CAM localisation, worst cases; images embedded, works offline.
    """
    from svdh.evaluate.report.html import build_report

    p = build_report(runs, out, title=title, sdc=sdc, n_boot=boot, n_worst=worst)
    typer.echo(f"wrote {p} ({p.stat().st_size / 1e6:.1f} MB); open it in a browser")


def compare(
    runs: list[Path] = typer.Argument(..., help="Run and ensemble directories."),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json."),
    split: Split = typer.Option(
        Split.oof, "--split", help="oof (cross-validation) or test (held-out split)."
    ),
    boot: int = typer.Option(
        1000, "--boot", help="Bootstrap resamples for the PCC confidence interval."
    ),
) -> None:
    """Print the comparison table of runs: backbone, initialisation, scheme, task, PCC, RMSE, MAE, accuracy."""
    from svdh.evaluate.metrics import evaluate_run
    from svdh.evaluate.report.html import comparison_rows
    from svdh.runs.tables import read_run

    rs = [read_run(r) for r in runs]
    ms = [evaluate_run(r, n_boot=boot) for r in rs]
    rows = comparison_rows(rs, ms, split.value)
    if split is Split.test and not rows:
        raise BadConfigError("none of these runs has a test.csv (a held-out test split)")
    if fmt is Format.json:
        typer.echo(json.dumps(rows))
    else:
        print_comparison(
            rows, "out-of-fold (cross-validation)" if split is Split.oof else "held-out test"
        )


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("ensemble")(ensemble)
    app.command("report")(report)
    app.command("compare")(compare)

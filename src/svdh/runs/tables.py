"""Reading and writing the prediction tables of run and ensemble directories.

A run directory (``svdh train``) and an ensemble directory (``svdh ensemble``) share one
layout for what evaluation, ensembling and the report need (see docs/architecture.md):
``config.yaml``, ``oof.csv``, optional ``test.csv``, ``metrics.json``, and, where the
explain stage wrote them, ``localisation.json`` and ``cam_gallery/*.png``.

:func:`read_run` loads and validates them; every problem is a :class:`BadRunError` that
names the file (and row) and what to do. :func:`read_predictions_csv` wraps a bare CSV
with ``y_true, y_pred`` so ``svdh evaluate`` takes it too. The fold models themselves are
rebuilt by ``svdh.models.weights.load_run``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from svdh.core.errors import BadRunError
from svdh.core.files import atomic_write_text, plain, write_json, write_yaml
from svdh.core.scoring import SeverityBins
from svdh.core.tasks import CLASS_TASKS, TASKS
from svdh.runs.layout import RunDir

__all__ = [
    "CLASS_TASKS",
    "TASKS",
    "Run",
    "load_predictions",
    "plain",
    "read_predictions_csv",
    "read_run",
    "write_json",
    "write_run",
]
REQUIRED_COLUMNS = ("image", "patient_id", "fold", "y_true", "y_pred")
#: Words in a config value or image path that mark phantom (synthetic) data.
PHANTOM_MARKERS = ("synth", "phantom")


@dataclass
class Run:
    """One run or ensemble directory (or a bare predictions CSV), validated."""

    path: Path
    name: str
    config: dict[str, Any]
    oof: pd.DataFrame
    test: pd.DataFrame | None = None
    metrics: dict[str, Any] | None = None
    localisation: dict[str, Any] | None = None
    cam_images: list[Path] = field(default_factory=list)
    conformal: dict[str, Any] | None = None

    @property
    def task(self) -> str:
        return str(self.config["task"])

    @property
    def is_class_task(self) -> bool:
        return self.task in CLASS_TASKS

    @property
    def is_ensemble(self) -> bool:
        return self.config.get("kind") == "ensemble"

    @property
    def score_scope(self) -> str:
        return str(self.config.get("score_scope", "hand"))

    @property
    def bins(self) -> SeverityBins | None:
        """Severity bins of the run's score scale (None for bone age)."""
        if self.task == "boneage":
            return None
        return bins_from_config(self.config, self.path)

    @property
    def prob_columns(self) -> list[str]:
        return prob_columns(self.oof)

    @property
    def prediction_kind(self) -> str:
        """``oof`` (honest) or ``in_fold`` (a model predicting patients it trained on)."""
        kind = str(self.config.get("prediction_kind", "oof"))
        if "prediction_kind" in self.oof.columns and (self.oof["prediction_kind"] != "oof").any():
            kind = "in_fold"
        return kind

    @property
    def is_phantom(self) -> bool:
        return is_phantom(self.config, self.oof)


def bins_from_config(config: dict[str, Any], where: Path | str = "config.yaml") -> SeverityBins:
    """The run's :class:`SeverityBins`: ``bins`` if given, else the default of ``score_scope``."""
    try:
        if config.get("bins"):
            return SeverityBins.from_dict(config["bins"])
        return SeverityBins.for_scope(str(config.get("score_scope", "hand")))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadRunError(
            f"{where}: config 'bins' is malformed ({exc}); expected SeverityBins.to_dict()"
        ) from None


def prob_columns(df: pd.DataFrame) -> list[str]:
    """The ``p_0..p_{K-1}`` columns of a prediction table, in class order."""
    cols = [c for c in df.columns if c.startswith("p_") and c[2:].isdigit()]
    return sorted(cols, key=lambda c: int(c[2:]))


def is_phantom(config: dict[str, Any], oof: pd.DataFrame | None = None) -> bool:
    """Whether a run's data are phantoms (synthetic radiographs), not patients.

    True when the config says ``data_kind: phantom``, when a data-source setting (a key
    naming ``source`` or ``data``, e.g. ``source: ra2-dream:runs/synth-ra``) contains
    ``synth`` or ``phantom``, or when a ``landmarks.json`` (written only by ``svdh synth``)
    lies beside the first image of ``oof.csv``. Other settings (an init checkpoint from a
    phantom bone-age model, an output path) do not count: they say nothing about the data
    the figures were measured on.
    """
    if str(config.get("data_kind", "")).lower() in ("phantom", "synthetic", "synth"):
        return True

    def strings(obj: Any) -> Iterator[str]:
        if isinstance(obj, str):
            yield obj
        elif isinstance(obj, dict):
            for v in obj.values():
                yield from strings(v)
        elif isinstance(obj, list | tuple):
            for v in obj:
                yield from strings(v)

    source_like = [
        v for k, v in config.items() if k != "data_kind" and ("source" in k or "data" in k)
    ]
    if any(m in s.lower() for s in strings(source_like) for m in PHANTOM_MARKERS):
        return True
    if oof is not None and len(oof) and "image" in oof.columns:
        first = Path(str(oof["image"].iloc[0]))
        try:
            return (first.parent / "landmarks.json").is_file()
        except OSError:
            return False
    return False


_STR_COLUMNS = {"image": str, "image_id": str, "patient_id": str, "side": str}


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=_STR_COLUMNS)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BadRunError(f"{path}: not a readable CSV ({exc})") from None


def _read_table(path: Path, *, class_k: int | None, allow_test_fold: bool) -> pd.DataFrame:
    return validate_table(_read_csv(path), path, class_k=class_k, allow_test_fold=allow_test_fold)


def validate_table(
    df: pd.DataFrame, path: Path | str, *, class_k: int | None, allow_test_fold: bool
) -> pd.DataFrame:
    """Check a prediction table's columns and values; ``path`` names it in errors."""
    df = df.copy()
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise BadRunError(
            f"{path}: missing column(s) {', '.join(missing)}; a prediction table needs "
            f"{', '.join(REQUIRED_COLUMNS)} (see docs/architecture.md, Runs)"
        )
    if df.empty:
        raise BadRunError(f"{path}: has no rows")
    if "image_id" not in df.columns:
        df["image_id"] = [Path(str(p)).stem for p in df["image"]]
    df["patient_id"] = df["patient_id"].astype(str)
    if "side" not in df.columns:
        df["side"] = ""
    df["side"] = df["side"].fillna("").astype(str)
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise BadRunError(
            f"{path}: image_id {dup.iloc[0]!r} appears more than once; every image is predicted once"
        )
    numeric = ["fold", "y_true", "y_pred", *prob_columns(df)]
    for col in numeric:
        vals = pd.to_numeric(df[col], errors="coerce")
        bad = np.flatnonzero(~np.isfinite(vals.to_numpy(dtype=np.float64)))
        if len(bad):
            i = int(bad[0])
            raise BadRunError(
                f"{path}: row {i + 2} ({df['image_id'].iloc[i]}): {col} = {df[col].iloc[i]!r} "
                "is missing or not a number"
            )
        df[col] = vals
    df["fold"] = df["fold"].astype(int)
    if not allow_test_fold and (df["fold"] < 0).any():
        i = int(np.flatnonzero(df["fold"].to_numpy() < 0)[0])
        raise BadRunError(
            f"{path}: row {i + 2}: fold {df['fold'].iloc[i]} in out-of-fold predictions"
        )
    if class_k is not None:
        pcols = prob_columns(df)
        if len(pcols) != class_k or pcols != [f"p_{k}" for k in range(class_k)]:
            raise BadRunError(
                f"{path}: a class task with {class_k} classes needs columns p_0..p_{class_k - 1}, "
                f"found {pcols or 'none'}"
            )
        sums = df[pcols].to_numpy().sum(axis=1)
        bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-3)
        if len(bad):
            i = int(bad[0])
            raise BadRunError(
                f"{path}: row {i + 2}: class probabilities sum to {sums[i]:.4f}, not 1"
            )
    for col in ("class_true", "class_pred"):
        if col in df.columns:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.reset_index(drop=True)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise BadRunError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise BadRunError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRunError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else None


def read_run(run_dir: str | Path) -> Run:
    """Load and validate a run or ensemble directory's config and prediction tables."""
    d = Path(run_dir)
    rd = RunDir(d)
    if not d.is_dir():
        raise BadRunError(
            f"{d}: not a directory; give a run directory written by `svdh train` or `svdh ensemble`"
        )
    cfg_path = rd.require_config(
        "is this a run directory written by `svdh train` or `svdh ensemble`?"
    )
    config = _read_yaml(cfg_path)
    task = config.get("task")
    if task not in TASKS:
        raise BadRunError(f"{cfg_path}: task {task!r} is not one of {', '.join(TASKS)}")
    oof_path = rd.oof
    if not oof_path.is_file():
        raise BadRunError(
            f"{d}: no {oof_path.name}; the run did not finish (rerun `svdh train` to complete it)"
        )
    k = bins_from_config(config, cfg_path).n_classes if task in CLASS_TASKS else None
    oof = _read_table(oof_path, class_k=k, allow_test_fold=False)
    test = None
    if rd.test.is_file():
        test = _read_table(rd.test, class_k=k, allow_test_fold=True)
    cams = sorted(rd.cam_gallery.glob("*.png")) if rd.cam_gallery.is_dir() else []
    return Run(
        path=d,
        name=d.name or str(d),
        config=config,
        oof=oof,
        test=test,
        metrics=_read_json(rd.metrics),
        localisation=_read_json(rd.localisation),
        cam_images=cams,
        conformal=_read_json(rd.conformal),
    )


def _csv_task(df: pd.DataFrame) -> str:
    """The task of a bare predictions CSV: a ``task`` column; bone age where the table
    carries the child's sex (``male``, as bone-age runs write it) or a ``boneage`` column;
    classification with ``p_k`` columns; else regression."""
    if "task" in df.columns and df["task"].notna().any():
        return str(df["task"].dropna().iloc[0])
    if ("male" in df.columns or "boneage" in df.columns) and not prob_columns(df):
        return "boneage"
    return "classification" if prob_columns(df) else "regression"


def read_predictions_csv(
    path: str | Path, scope: str | None = None, task: str | None = None
) -> Run:
    """Wrap a bare CSV of ``y_true, y_pred`` (optional ``patient_id``, ``side``, ``fold``,
    ``reader2``, ``p_k``...) as a :class:`Run`.

    The score scope is ``scope`` if given, else a ``score_scope`` column, else ``hand`` when
    a ``side`` column holds L/R, else ``patient``. The task is ``task`` if given, else
    ``boneage`` for a table with a ``male`` or ``boneage`` column (months, no classes),
    ``classification`` when ``p_k`` columns are present, else ``regression``.
    """
    p = Path(path)
    if not p.is_file():
        raise BadRunError(
            f"{p}: no such file; give a run directory, an ensemble directory or a CSV with y_true,y_pred"
        )
    df = _read_csv(p)
    for col in ("y_true", "y_pred"):
        if col not in df.columns:
            raise BadRunError(
                f"{p}: missing column {col!r}; a predictions CSV needs y_true and y_pred"
            )
    if "image" not in df.columns:
        df["image"] = [f"row{i + 2}" for i in range(len(df))]
    if "patient_id" not in df.columns:
        df["patient_id"] = df["image_id"] if "image_id" in df.columns else df["image"]
    if "fold" not in df.columns:
        df["fold"] = 0
    if scope is None:
        if "score_scope" in df.columns and df["score_scope"].notna().any():
            scope = str(df["score_scope"].dropna().iloc[0])
        elif "side" in df.columns and df["side"].astype(str).str.upper().isin(["L", "R"]).any():
            scope = "hand"
        else:
            scope = "patient"
    if scope not in ("hand", "patient"):
        raise BadRunError(f"{p}: score scope {scope!r} must be 'hand' or 'patient'")
    if task is None:
        task = _csv_task(df)
    if task not in TASKS:
        raise BadRunError(f"{p}: task {task!r} is not one of {', '.join(TASKS)}")
    config: dict[str, Any] = {"task": task, "score_scope": scope, "source": str(p)}
    bins = SeverityBins.for_scope(scope)
    if task != "boneage":  # months have no severity classes
        config["bins"] = bins.to_dict()
    k = bins.n_classes if task in CLASS_TASKS else None
    table = validate_table(df, p, class_k=k, allow_test_fold=True)
    return Run(path=p, name=p.stem, config=config, oof=table)


def load_predictions(target: str | Path, scope: str | None = None, task: str | None = None) -> Run:
    """A run directory, an ensemble directory, or a predictions CSV (``task``: of a CSV)."""
    p = Path(target)
    if p.is_dir():
        return read_run(p)
    return read_predictions_csv(p, scope=scope, task=task)


def write_run(
    out_dir: str | Path,
    config: dict[str, Any],
    oof: pd.DataFrame,
    test: pd.DataFrame | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``config.yaml``, ``oof.csv`` (and ``test.csv``, ``metrics.json``) in the run
    layout, each file atomically."""
    rd = RunDir(out_dir)
    rd.path.mkdir(parents=True, exist_ok=True)
    write_yaml(rd.config, config)
    atomic_write_text(rd.oof, oof.to_csv(index=False))
    if test is not None:
        atomic_write_text(rd.test, test.to_csv(index=False))
    if metrics is not None:
        write_json(rd.metrics, metrics)
    return rd.path

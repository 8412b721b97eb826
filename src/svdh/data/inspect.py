"""What ``svdh data inspect`` reports: a summary of a manifest and a contact sheet.

:func:`summarize` turns a manifest into one JSON-safe dict (counts, distributions, problems and
one entry per image); :func:`contact_sheet` draws raw images with the detected hand box beside
their preprocessed result, so a person can see at a glance that cropping works.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from svdh.core.preprocess import PreprocessConfig
from svdh.data.manifest import source_kind

#: Targets listed per image, by source kind (others: every target the manifest carries).
ROW_TARGETS = {
    "ra2-dream": ("erosion", "jsn", "svdh", "patient_svdh"),
    "rsna-boneage": ("boneage", "male"),
}


def _clean(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return (
            None if not math.isfinite(float(v)) else (int(v) if float(v).is_integer() else float(v))
        )
    if isinstance(v, np.integer):
        return int(v)
    return v


def row_targets(df: pd.DataFrame) -> list[str]:
    """The per-image target fields of this manifest's source kind."""
    kind = source_kind(df)
    if kind in ROW_TARGETS:
        return list(ROW_TARGETS[kind])
    wanted = ("svdh", "erosion", "jsn", "patient_svdh", "reader2", "boneage", "male")
    return [c for c in wanted if c in df and df[c].notna().any()]


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Counts, target distributions, severity classes, problems and rows of a manifest."""
    kind = source_kind(df)
    targets = row_targets(df)
    out: dict[str, Any] = {
        "source": df.attrs.get("source", ""),
        "kind": kind,
        "n_images": int(len(df)),
        "n_patients": int(df["patient_id"].nunique()),
        "sides": {
            str(k or "unknown"): int(v) for k, v in df["side"].value_counts().sort_index().items()
        },
    }
    out["distribution"] = _distribution(df, targets)
    if "svdh" in targets and df["svdh"].notna().any():
        out["severity_classes"] = _severity_classes(df)
    if "male" in targets and df["male"].notna().any():
        out["male_fraction"] = round(float(df["male"].mean()), 3)
    if "boneage" in targets and df["boneage"].notna().any():
        years = np.floor(df["boneage"].dropna().to_numpy() / 12).astype(int)
        out["boneage_years"] = {
            f"{y}": int((years == y).sum()) for y in range(int(years.min()), int(years.max()) + 1)
        }
    out["problems"] = list(df.attrs.get("problems", []))
    out["n_skipped"] = int(df.attrs.get("n_skipped", 0))
    out["n_unlinked_images"] = int(df.attrs.get("n_unlinked", 0))
    out["rows"] = [_summary_row(rec, targets) for rec in df.to_dict("records")]
    return out


def _distribution(df: pd.DataFrame, targets: list[str]) -> dict[str, Any]:
    """n, min, median, mean and max of each numeric target."""
    dist: dict[str, Any] = {}
    for col in targets:
        if col == "male":
            continue
        v = df[col].dropna().to_numpy(dtype=float)
        if v.size:
            dist[col] = {
                "n": int(v.size),
                "min": _clean(v.min()),
                "median": _clean(float(np.median(v))),
                "mean": round(float(v.mean()), 2),
                "max": _clean(v.max()),
            }
    return dist


def _severity_classes(df: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Images per severity class, for each score scope (hand, patient)."""
    from svdh.core.scoring import SeverityBins

    classes: dict[str, dict[str, int]] = {}
    for scope, part in df[df["svdh"].notna()].groupby("score_scope"):
        bins = SeverityBins.for_scope(str(scope) or "hand")
        counts = np.bincount(
            np.atleast_1d(bins.to_class(part["svdh"].to_numpy())), minlength=bins.n_classes
        )
        classes[str(scope)] = {label: int(c) for label, c in zip(bins.labels, counts, strict=True)}
    return classes


def _summary_row(rec: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    row = {
        "image": rec["image"],
        "image_id": rec["image_id"],
        "patient_id": rec["patient_id"],
        "side": rec["side"],
    }
    if rec.get("visit"):
        row["visit"] = rec["visit"]
    for col in targets:
        v = _clean(rec.get(col))
        row[col] = bool(v) if col == "male" and v is not None else v
    return row


def _caption(rec: dict[str, Any], targets: list[str]) -> str:
    parts = [str(rec["image_id"])]
    if rec.get("side"):
        parts.append(str(rec["side"]))
    for col in targets:
        v = _clean(rec.get(col))
        if v is None:
            continue
        if col == "male":
            parts.append("M" if v else "F")
        elif col == "boneage":
            parts.append(f"{v}mo")
        elif col in ("svdh", "patient_svdh", "erosion", "jsn"):
            parts.append(
                f"{'pt' if col == 'patient_svdh' else col[:3] if col != 'svdh' else 'SvdH'} {v}"
            )
    return " ".join(parts)


def pick_for_sheet(df: pd.DataFrame, max_images: int) -> pd.DataFrame:
    """At most ``max_images`` rows spread evenly over the range of the main target."""
    if len(df) <= max_images:
        return df
    key = next((c for c in ("svdh", "boneage") if c in df and df[c].notna().any()), None)
    ordered = df.sort_values(key, kind="stable") if key else df
    idx = np.unique(np.linspace(0, len(ordered) - 1, max_images).round().astype(int))
    return ordered.iloc[idx]


def _decisions(rad: Any) -> str:
    """One line of what :func:`svdh.core.canonical.analyse` decided for every hand of a film."""
    from svdh.core.canonical import analyse

    try:
        return " | ".join(d.summary() for d in analyse(rad))
    except Exception as exc:  # the sheet is for looking: say it in place
        return f"canonical stage failed: {exc}"


def contact_sheet(
    df: pd.DataFrame,
    out: str | Path,
    *,
    tile: int = 192,
    max_images: int = 48,
    cfg: PreprocessConfig | None = None,
    columns: int = 4,
) -> Path:
    """Write a PNG: per image, the raw film (red: detected hand box, green: square crop
    window) beside the preprocessed result, with id and targets underneath, and under them
    what the canonical stage decided (svdh.core.canonical: hands, turn, tilt, mirroring, side
    and its source, view, or the refusal)."""
    from PIL import Image, ImageDraw, ImageFont

    from svdh.core.io import read_radiograph
    from svdh.core.preprocess import preprocess

    cfg = cfg or PreprocessConfig(size=tile)
    if cfg.size != tile:
        cfg = replace(cfg, size=tile)
    chosen = pick_for_sheet(df, max_images)
    targets = row_targets(df)
    font = ImageFont.load_default()
    cap_h, gap = 26, 6
    cell_w, cell_h = 2 * tile + gap, tile + cap_h
    n = len(chosen)
    cols = max(1, min(columns, n))
    rows = math.ceil(n / cols)
    sheet = Image.new(
        "RGB", (cols * (cell_w + gap) + gap, rows * (cell_h + gap) + gap), (24, 24, 32)
    )
    draw = ImageDraw.Draw(sheet)
    for k, rec in enumerate(chosen.to_dict("records")):
        x, y = gap + (k % cols) * (cell_w + gap), gap + (k // cols) * (cell_h + gap)
        try:
            rad = read_radiograph(rec["image"])
            arr, t = preprocess(rad, cfg, return_transform=True)
        except Exception as exc:  # show the failure in place, the sheet is for looking
            draw.rectangle([x, y, x + cell_w, y + tile], outline=(200, 60, 60))
            draw.text((x + 4, y + 4), _wrap(str(exc), 60), fill=(255, 120, 120), font=font)
            draw.text(
                (x, y + tile + 1), _caption(rec, targets)[:60], fill=(220, 220, 220), font=font
            )
            continue
        draw.text((x, y + tile + 13), _decisions(rad)[:60], fill=(150, 200, 255), font=font)
        raw = _raw_thumbnail(rad.pixels, t, tile)
        sheet.paste(raw, (x + (tile - raw.size[0]) // 2, y + (tile - raw.size[1]) // 2))
        sheet.paste(Image.fromarray(arr).convert("RGB"), (x + tile + gap, y))
        draw.text((x, y + tile + 1), _caption(rec, targets)[:60], fill=(220, 220, 220), font=font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out


def _raw_thumbnail(pixels: np.ndarray, t: Any, tile: int) -> Any:
    """The raw film scaled to fit ``tile`` (RGB), with the detected hand box (red) and the
    square crop window (green) of the preprocessing transform ``t``."""
    from PIL import Image, ImageDraw

    raw = Image.fromarray(np.clip(pixels * 255 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    s = tile / max(raw.size)
    raw = raw.resize(
        (max(1, round(raw.size[0] * s)), max(1, round(raw.size[1] * s))),
        Image.Resampling.BILINEAR,
    )
    d = ImageDraw.Draw(raw)
    bx0, by0, bx1, by1 = t.box
    d.rectangle([bx0 * s, by0 * s, bx1 * s - 1, by1 * s - 1], outline=(255, 60, 60))
    d.rectangle(
        [t.x0 * s, t.y0 * s, (t.x0 + t.side) * s - 1, (t.y0 + t.side) * s - 1],
        outline=(60, 220, 60),
    )
    return raw


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)[:8])

"""Contact sheets of phantom cohorts: a grid of thumbnails with their labels.

RA cohorts are laid out by increasing hand score and child cohorts by increasing bone age,
picking evenly spaced images when the cohort has more than fit, so one sheet shows the
whole range of the cohort.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError
from svdh.core.landmarks import load_landmarks


def _read(path: Path) -> np.ndarray:
    from svdh.core.io import read_radiograph

    return read_radiograph(path).pixels


def _label(name: str, entry: dict[str, Any]) -> tuple[str, float]:
    if "boneage" in entry:
        months = entry["boneage"]
        return f"{Path(name).stem}  {months / 12:.1f} y  {'M' if entry['male'] else 'F'}", float(
            months
        )
    hands = entry.get("hands", {})
    tot = sum(h.get("total", 0) for h in hands.values())
    ero = sum(h.get("erosion", 0) for h in hands.values())
    jsn = sum(h.get("jsn", 0) for h in hands.values())
    return f"{Path(name).stem}  SvdH {tot} (E {ero}, J {jsn})", float(tot)


def make_sheet(
    cohort_dir: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    max_tiles: int = 16,
    tile: int = 256,
    cols: int = 4,
) -> Path:
    """Write a contact sheet of the cohort in ``cohort_dir`` to ``out_png``."""
    from PIL import Image, ImageDraw, ImageFont

    d = Path(cohort_dir)
    doc = load_landmarks(d)
    entries = [(name, e, *_label(name, e)) for name, e in doc["images"].items()]
    if not entries:
        raise BadConfigError(f"{d}: the cohort has no images")
    entries.sort(key=lambda t: (t[3], t[0]))
    if len(entries) > max_tiles:
        pick = np.unique(np.round(np.linspace(0, len(entries) - 1, max_tiles)).astype(int))
        entries = [entries[i] for i in pick]
    wide = any(e["width"] > e["height"] for _, e, _, _ in entries)
    tw = tile * 2 if wide else tile
    cols = max(1, cols // 2) if wide else cols
    rows = -(-len(entries) // cols)
    lab = max(14, tile // 14)
    sheet = Image.new("L", (cols * tw, rows * (tile + lab)), 0)
    draw = ImageDraw.Draw(sheet)
    try:
        font = ImageFont.load_default(size=max(10, lab - 4))
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    for i, (name, _, text, _) in enumerate(entries):
        px = _read(d / name)
        im = Image.fromarray(np.rint(np.clip(px, 0, 1) * 255).astype(np.uint8))
        im.thumbnail((tw, tile), Image.Resampling.LANCZOS)
        x0 = (i % cols) * tw + (tw - im.width) // 2
        y0 = (i // cols) * (tile + lab)
        sheet.paste(im, (x0, y0 + (tile - im.height) // 2))
        draw.text(((i % cols) * tw + 4, y0 + tile + 1), text, fill=230, font=font)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out, format="PNG", optimize=True)
    return out

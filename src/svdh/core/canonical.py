"""Any film in, canonical single hands out (or a clear refusal): the stage before the model.

One function, :func:`canonicalise`, is used by training caches, prediction, the web service and
Grad-CAM alike. It works on the hand mask of :func:`svdh.core.preprocess.hand_mask_small`
(a ~256 px copy) and decides, per film:

1. **How many hands.** Mask components of similar size side by side are two hands (a
   both-hands film): each is cut out alone, the other hand blanked to the film's background.
2. **Orientation.** The film is turned fingers-up: the fingers are the end of the hand whose
   cross-sections cut many thin parallel protrusions, the wrist the single wide stump. The turn
   is ``rotation_k`` quarter turns (exact, ``np.rot90``) plus a residual ``tilt_deg`` that puts
   the hand's long axis (wrist centre to the finger centre) upright.
3. **Thumb side.** Once upright, the thumb-index web is the lowest of the deep valleys between
   protrusions at one end of the row of valleys: on a PA film of a left hand the thumb is on the
   image right. Every canonical hand is shown as that left-hand PA view, so a right hand (or a
   mirrored film) is flipped (``mirrored``); the side it stands for is reconciled with the
   film's metadata by :func:`reconcile_side`, which says which source decided.
4. **View.** A whole hand; ``wrist_only`` (no finger protrusions: finger joints not visible, a
   warning, and the hand stays out of patient totals); ``foot`` (short, shallow toe protrusions);
   ``inverted`` greyscale; ``other`` (no hand shape found): the last three are refusals.

Everything is a pure function of the pixels (and the hints passed in), deterministic, and every
decision is in the :class:`FilmDecision` of each hand.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from svdh.core.preprocess import SmallMask, as_float_image, small_mask

#: Views a hand can be given; the last three are refusals.
VIEWS = ("hand", "wrist_only", "foot", "inverted", "other")
REFUSED_VIEWS = ("foot", "inverted", "other")
#: Sources of a hand's side, strongest first: an explicit --patients table, DICOM laterality,
#: the file name, the hand's position on a both-hands PA film, the thumb side of the anatomy.
SIDE_SOURCES = ("patients", "dicom", "filename", "position", "anatomy")

WRIST_ONLY_WARNING = "wrist only: finger joints not visible"
#: A second mask component is a second hand when at least this fraction of the largest one.
_SECOND_HAND = 0.4


@dataclass(frozen=True)
class FilmDecision:
    """What the canonical stage did to one hand of a film (carried by its prediction row).

    ``hand_index`` / ``n_hands``: which hand of the film (left to right on the film as given) and
    how many were found (2: the film was split). ``rotation_k``: counter-clockwise quarter turns
    applied; ``tilt_deg``: the further counter-clockwise rotation (degrees) after them;
    ``mirrored``: flipped left-right after turning, to show the left-hand PA view. ``side``:
    the side it is scored as, ``side_source`` the source that decided, ``side_anatomy`` what the
    thumb side alone says. ``view``: one of :data:`VIEWS`; ``refused`` with ``reason`` for feet,
    inverted films and other images. ``box``: the hand's box on the film as given (x0, y0, x1,
    y1). ``warnings``: one line each, meant for the user.
    """

    hand_index: int = 0
    n_hands: int = 1
    rotation_k: int = 0
    tilt_deg: float = 0.0
    mirrored: bool = False
    side: str | None = None
    side_source: str | None = None
    side_anatomy: str | None = None
    view: str = "hand"
    refused: bool = False
    reason: str = ""
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    warnings: tuple[str, ...] = ()

    @property
    def split(self) -> bool:
        return self.n_hands > 1

    @property
    def in_totals(self) -> bool:
        """Whether this hand may enter a patient total (a whole, accepted hand)."""
        return self.view == "hand" and not self.refused

    def summary(self) -> str:
        """One line for sheets and terminals, e.g. ``hand 1/2, rot 90, tilt -4, mirrored, R (filename)``."""
        if self.refused:
            return f"refused: {self.reason}"
        bits = [f"hand {self.hand_index + 1}/{self.n_hands}" if self.split else "hand"]
        bits.append(f"rot {90 * self.rotation_k}")
        bits.append(f"tilt {self.tilt_deg:+.0f}")
        if self.mirrored:
            bits.append("mirrored")
        if self.side:
            bits.append(f"{self.side} ({self.side_source})")
        if self.view != "hand":
            bits.append(self.view)
        return ", ".join(bits)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        d["warnings"] = list(self.warnings)
        return d


@dataclass
class CanonicalHand:
    """One hand, turned fingers-up PA and shown as a left hand: float32 pixels in [0, 1]."""

    pixels: np.ndarray
    decision: FilmDecision
    #: 2 x 3 affine mapping original (x, y) pixel coordinates to ``pixels`` coordinates.
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2, 3))

    def map_points(self, xy: Any) -> np.ndarray:
        p = np.asarray(xy, dtype=np.float64)
        return p @ self.matrix[:, :2].T + self.matrix[:, 2]


@dataclass(frozen=True)
class SideHints:
    """What the film's metadata says about its side(s): 'L', 'R', 'B' (both) or None."""

    patients: str | None = None
    dicom: str | None = None
    filename: str | None = None


# --------------------------------------------------------------------------- shape analysis


@dataclass(frozen=True)
class Shape:
    """Measurements of one hand mask once turned fingers-up (working resolution).

    ``tips``: heights (rows from the top) of the protrusions along the top outline, left to
    right, and ``prominence`` of each (how far it stands out of the outline), in pixels.
    ``thumb_score``: > 0 where the thumb is on the image right (left-hand PA view).
    ``cut_top``: the finger end leaves the film. ``fill``: mask area over its box.
    """

    length: int
    width: int
    tips: tuple[float, ...]
    prominence: tuple[float, ...]
    thumb_score: float
    fill: float
    cut_top: bool = False
    cut_bottom: bool = False
    fills_film: bool = False

    @property
    def n_fingers(self) -> int:
        """Protrusions standing out at least 12% of the hand's length (fingers or toes)."""
        return sum(1 for p in self.prominence if p >= 0.12 * self.length)

    @property
    def second_prominence(self) -> float:
        """The second most prominent protrusion, fraction of the length (the first is the
        highest tip, whose prominence is the whole length)."""
        p = sorted(self.prominence, reverse=True)
        return p[1] / max(1, self.length) if len(p) > 1 else 0.0

    @property
    def flat_top(self) -> bool:
        """The tips lie along a line, not in an arch round the middle finger: an end of the row
        is under 3.5% of the length below the highest tip (the fingers of a whole hand fall
        away on both sides of the middle one, even where the film edge cuts their tips; a
        film edge cutting them short leaves them level, or level with a slope)."""
        if len(self.tips) < 3:
            return True
        drop = min(self.tips[0], self.tips[-1]) - min(self.tips)
        return drop < 0.035 * self.length

    @property
    def highest_at_end(self) -> bool:
        """The highest tip is at an end of the row of tips (a big toe), not inside (a middle finger)."""
        if len(self.tips) < 3:
            return False
        top = int(np.argmin(self.tips))
        return top in (0, len(self.tips) - 1)


def _tips(m: np.ndarray, smooth: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top outline of an upright mask and its protrusions: (profile, peak columns, prominences).

    ``smooth``: prominences measured within half the mask's width (a stump cut straight by the
    film edge, turned by nearest neighbours, is a row of equal steps with one-pixel notches,
    each otherwise a peak as prominent as the whole hand); used for the orientation only."""
    from scipy.signal import find_peaks

    length = m.shape[0]
    top = np.where(m.any(axis=0), np.argmax(m, axis=0), length).astype(np.float64)
    padded = np.concatenate(([length], top, [length]))
    if smooth:
        # prominence within a window of half the width: a step of a flat edge stands out
        # only by its notch there, a finger by the valleys beside it
        wlen = max(3, m.shape[1] // 2) | 1
        with warnings.catch_warnings():  # flat stretches have peaks of prominence 0: dropped
            warnings.simplefilter("ignore")
            peaks, props = find_peaks(-padded, prominence=0.04 * length, wlen=wlen)
        return top, peaks - 1, np.asarray(props["prominences"], dtype=np.float64)
    peaks, props = find_peaks(-padded, prominence=0.04 * length)
    return top, peaks - 1, np.asarray(props["prominences"], dtype=np.float64)


def _valleys(m: np.ndarray) -> list[tuple[float, float, float]]:
    """Convexity defects of the mask's outline as (x, y, depth) in pixels, deepest first."""
    import cv2

    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    if not contours:
        return []
    c = max(contours, key=cv2.contourArea)
    if len(c) < 8:
        return []
    try:
        defects = cv2.convexityDefects(c, cv2.convexHull(c, returnPoints=False))
    except cv2.error:  # self-intersecting hull on odd outlines
        return []
    if defects is None:
        return []
    out = [
        (float(c[far][0][0]), float(c[far][0][1]), float(depth) / 256.0)
        for _s, _e, far, depth in np.asarray(defects).reshape(-1, 4)
    ]
    return sorted(out, key=lambda v: -v[2])


def thumb_score(m: np.ndarray) -> float:
    """> 0 where the thumb of an upright hand mask is on the image right, < 0 on the left.

    Three cues, each signed and scaled by the hand's size, are added: the thumb-index web is
    the lowest valley at an end of the row of finger valleys; the thumb tip is the lowest tip at
    an end of the row of tips (a quarter weight: a short little finger can be as low); the
    thenar eminence and thumb pull the palm's centre of mass towards the thumb, away from the
    forearm's axis. Measured on the real samples: all 26 hands right, by a margin of 0.02-0.5.
    """
    length, width = m.shape
    score = 0.0
    deep = [v for v in _valleys(m) if v[1] < 0.7 * length and v[2] >= 0.08 * length]
    if len(deep) >= 2:
        row = sorted(deep[:4], key=lambda v: v[0])
        score += (row[-1][1] - row[0][1]) / length
    top, peaks, _ = _tips(m)
    if len(peaks) >= 2:
        score += 0.25 * (top[peaks[-1]] - top[peaks[0]]) / length
    ys, xs = np.nonzero(m)
    palm = (ys >= 0.35 * length) & (ys < 0.7 * length)
    stump = ys >= 0.85 * length
    if palm.any() and stump.any():
        score += (xs[palm].mean() - xs[stump].mean()) / width
    return float(score)


def measure(
    m: np.ndarray, cut_top: bool = False, cut_bottom: bool = False, fills_film: bool = False
) -> Shape:
    """:class:`Shape` of an upright, trimmed hand mask (and what is known of the film's edges)."""
    length, width = m.shape
    top, peaks, prom = _tips(m)
    return Shape(
        length=int(length),
        width=int(width),
        tips=tuple(float(top[p]) for p in peaks),
        prominence=tuple(float(p) for p in prom),
        thumb_score=thumb_score(m),
        fill=float(m.sum() / max(1, m.size)),
        cut_top=cut_top,
        cut_bottom=cut_bottom,
        fills_film=fills_film,
    )


def classify_view(s: Shape) -> tuple[str, str]:
    """The view of an upright mask and, for refusals and warnings, the reason in words.

    * ``hand``: at least three protrusions standing out 12% of the length, the highest of them
      inside the row (the middle finger), not at an end, and where the finger end leaves the
      film, the tips still in an arch (:attr:`Shape.flat_top`: cut fingers are level);
    * ``wrist_only``: otherwise, where the finger end leaves the film (a wrist view, or the
      fingers cut before their joints);
    * ``foot``: otherwise, at least three tips and two of: the highest tip at an end of the
      row (the big toe), the protrusions short (second prominence under 17% of the length),
      the outline filled (over 65% of its box);
    * ``wrist_only`` again where only the other end leaves the film;
    * ``other``: no hand outline at all.

    Measured on the real samples: the 6 feet and 26 hands all right.
    """
    if s.n_fingers >= 3 and not s.highest_at_end and not (s.cut_top and s.flat_top):
        return "hand", ""
    if s.fills_film:
        return "other", "no hand outline: the anatomy fills the film (another body part?)"
    if s.cut_top:
        return "wrist_only", WRIST_ONLY_WARNING
    foot_votes = int(s.highest_at_end) + int(s.second_prominence < 0.17) + int(s.fill > 0.65)
    if len(s.tips) >= 3 and foot_votes >= 2:
        return "foot", "a foot, not a hand (toes: short protrusions, the big toe highest)"
    if s.cut_bottom:
        return "wrist_only", WRIST_ONLY_WARNING
    return "other", "no hand outline found (no fingers, nothing leaving the film)"


# --------------------------------------------------------------------------- orientation


def _runs(row: np.ndarray, min_len: int) -> int:
    """Number of runs of True at least ``min_len`` long in a 1-D bool array."""
    d = np.diff(np.concatenate(([0], row.astype(np.int8), [0])))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)
    return int(((ends - starts) >= min_len).sum())


def _end_runs(m: np.ndarray, top: bool) -> float:
    """Mean protrusion count over the rows of one end (40% of the length) of an upright mask."""
    ys = np.flatnonzero(m.any(axis=1))
    if len(ys) < 4:
        return 0.0
    y0, y1 = int(ys[0]), int(ys[-1]) + 1
    n = max(2, int(0.4 * (y1 - y0)))
    rows = m[y0 : y0 + n] if top else m[y1 - n : y1]
    min_len = max(2, int(0.012 * m.shape[1]))
    return float(np.mean([min(_runs(r, min_len), 5) for r in rows]))


def _upright_score(m: np.ndarray) -> float:
    """How much an orientation looks fingers-up: protrusions at the top, a stump at the bottom
    (cross-sections through the ends, and the tips standing out of the outline)."""
    length = max(1, m.shape[0])

    def fingers(mm: np.ndarray) -> int:
        _, _, prom = _tips(mm, smooth=True)
        return int((prom >= 0.12 * length).sum())

    runs = _end_runs(m, True) - _end_runs(m, False)
    return runs + 0.5 * (fingers(m) - fingers(m[::-1]))


def _rotate_mask(m: np.ndarray, deg: float) -> np.ndarray:
    """Rotate a bool mask counter-clockwise by ``deg`` about its centre on a canvas that holds it."""
    import cv2

    h, w = m.shape
    d = int(np.ceil(np.hypot(h, w))) + 4
    canvas = np.zeros((d, d), np.uint8)
    y0, x0 = (d - h) // 2, (d - w) // 2
    canvas[y0 : y0 + h, x0 : x0 + w] = m
    rot = cv2.getRotationMatrix2D((d / 2 - 0.5, d / 2 - 0.5), deg, 1.0)
    out = cv2.warpAffine(canvas, rot, (d, d), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(out)
    if not len(ys):
        return out.astype(bool)
    return out[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(bool)


def _axis_angle(m: np.ndarray) -> float:
    """Counter-clockwise angle (degrees) turning the mask's long axis to vertical, in (-90, 90]."""
    ys, xs = np.nonzero(m)
    x, y = xs - xs.mean(), ys - ys.mean()
    cov = np.cov(np.vstack([x, y]))
    evals, evecs = np.linalg.eigh(cov)
    vx, vy = evecs[:, int(np.argmax(evals))]
    # image y points down; the angle of the axis from vertical, turned so that it stands upright
    ang = np.degrees(np.arctan2(vx, vy))
    ang = (ang + 90.0) % 180.0 - 90.0
    return float(-ang if ang != -90.0 else 90.0)


def orientation(m: np.ndarray) -> tuple[int, float]:
    """Quarter turns ``k`` and residual tilt (degrees, counter-clockwise) putting fingers up.

    ``m``: one hand's bool mask. The long axis is set upright and turned four times: the
    fingers-up turn has the most protrusions at the top and a single stump at the bottom. The angle is then refined twice so that the
    line from the wrist's centre to the fingers' centre stands upright.
    """
    base = _axis_angle(m)
    best, angle = -np.inf, base
    turned = _rotate_mask(m, base)
    for k in range(4):
        s = _upright_score(np.rot90(turned, k))
        if s > best + 1e-9:
            best, angle = s, base + 90.0 * k
    for _ in range(2):
        angle += _axis_correction(_rotate_mask(m, angle))
    total = (angle + 180.0) % 360.0 - 180.0
    k = int(np.round(total / 90.0)) % 4
    tilt = (total - 90.0 * k + 180.0) % 360.0 - 180.0
    return k, float(tilt)


def _axis_correction(up: np.ndarray) -> float:
    """Counter-clockwise degrees that set the wrist-to-fingers line of an upright mask vertical."""
    ys, xs = np.nonzero(up)
    if len(ys) < 16:
        return 0.0
    y0, length = ys.min(), ys.max() - ys.min() + 1
    top = ys < y0 + 0.35 * length
    bottom = ys > y0 + 0.8 * length
    if not top.any() or not bottom.any():
        return 0.0
    dx = xs[top].mean() - xs[bottom].mean()
    dy = ys[bottom].mean() - ys[top].mean()
    return float(np.clip(np.degrees(np.arctan2(dx, dy)), -30.0, 30.0))


def upright_mask(m: np.ndarray, k: int, tilt: float) -> np.ndarray:
    """``m`` turned by ``k`` quarter turns and then ``tilt`` degrees (both counter-clockwise)."""
    r = np.rot90(m, k)
    return _rotate_mask(r, tilt) if abs(tilt) > 1e-6 else _trim(r)


def _trim(m: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(m)
    if not len(ys):
        return m
    return m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


# --------------------------------------------------------------------------- laterality


def reconcile_side(
    anatomy: str | None, hints: SideHints | None = None, position: str | None = None
) -> tuple[str | None, str | None, tuple[str, ...]]:
    """The side a hand is scored as, the source that decided, and conflict warnings.

    Sources, strongest first (:data:`SIDE_SOURCES`): ``--patients``, DICOM laterality, the file
    name, the position on a both-hands PA film, the thumb side. 'B' (both hands) in a hint
    says nothing about one hand. Every source that disagrees with the decider is reported in a
    warning (a mirrored film shows as anatomy against the labels): never silently resolved.
    """
    hints = hints or SideHints()
    said = {
        "patients": hints.patients,
        "dicom": hints.dicom,
        "filename": hints.filename,
        "position": position,
        "anatomy": anatomy,
    }
    said = {k: v for k, v in said.items() if v in ("L", "R")}
    if not said:
        return None, None, ()
    source = next(k for k in SIDE_SOURCES if k in said)
    side = said[source]
    words = {
        "patients": "--patients",
        "dicom": "DICOM laterality",
        "filename": "the file name",
        "position": "the hand's place on the film",
        "anatomy": "the anatomy (thumb side)",
    }
    warnings = tuple(
        f"side conflict: {words[k]} says {v}, {words[source]} says {side}; scored as {side}"
        + (" (a mirrored film, or a wrong label)" if "anatomy" in (k, source) else "")
        for k, v in said.items()
        if v != side
    )
    return side, source, warnings


# --------------------------------------------------------------------------- the stage


#: Residual tilts below this (degrees) are reported but not resampled away.
MIN_TILT = 5.0


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """The hand-sized components of a working mask, largest first (at most two)."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n < 2:
        return []
    areas = stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    for i in range(len(areas)):  # long thin strips are collimation bands, not hands
        rw, rh = _rect_sides(labels == i + 1)
        if min(rw, rh) < 0.15 * max(rw, rh, 1.0):
            areas[i] = 0
    order = np.argsort(-areas, kind="stable")
    big = float(areas[order[0]])
    if big <= 0:
        return []
    hands = [order[0]]
    if len(order) > 1 and areas[order[1]] >= _SECOND_HAND * big:
        # a second hand is about as long as the first (a cut-off thumb or finger is not)
        long0, long1 = (max(_rect_sides(labels == i + 1)) for i in order[:2])
        if long1 >= 0.6 * long0:
            hands.append(order[1])
    return [labels == (i + 1) for i in hands]


def _rect_sides(m: np.ndarray) -> tuple[float, float]:
    import cv2

    pts = np.column_stack(np.nonzero(m)[::-1]).astype(np.float32)
    (_, _), (rw, rh), _ = cv2.minAreaRect(pts)
    return float(rw), float(rh)


def _edge_cuts(m: np.ndarray, field: np.ndarray | None, deg: float) -> tuple[bool, bool, int]:
    """Whether the hand leaves the film at its finger end and at its wrist end once turned
    counter-clockwise by ``deg``, and how many film edges (of 4) it touches."""

    h, w = m.shape
    touch = m & _near_film_edge((h, w), field)  # the image border is a film edge too
    ys, xs = np.nonzero(m)
    if len(ys) < 8:
        return False, False, 0
    a = np.deg2rad(deg)
    up = np.array([np.sin(a), -np.cos(a)])  # the original direction that ends up pointing up
    s_all = xs * up[0] + ys * up[1]
    lo, hi = float(s_all.min()), float(s_all.max())
    ty, tx = np.nonzero(touch)
    s_touch = tx * up[0] + ty * up[1]
    band = 0.1 * (hi - lo)
    top = int((s_touch >= hi - band).sum()) >= 3
    bottom = int((s_touch <= lo + band).sum()) >= 3
    edges = sum(
        bool(touch[region].sum() >= 3)
        for region in (
            np.s_[: h // 8, :],
            np.s_[-(h // 8) :, :],
            np.s_[:, : w // 8],
            np.s_[:, -(w // 8) :],
        )
    )
    return top, bottom, edges


def _inverted_is_a_hand(img: np.ndarray) -> bool:
    """Whether the film's negative shows a whole hand (then the film is stored bone-dark)."""
    sm = small_mask(1.0 - img)
    if sm.mask is None or not sm.mask.any():
        return False
    comps = _components(sm.mask)
    return bool(comps) and _look_at(comps[0], sm.field, sm.scale, img.shape[::-1])[3] == "hand"


def _near_film_edge(
    shape: tuple[int, int], field: np.ndarray | None, fraction: float = 0.03
) -> np.ndarray:
    """Pixels within ``fraction`` of the film's edge (or the image border)."""
    import cv2

    h, w = shape
    inside = np.ones((h, w), np.uint8) if field is None else field.astype(np.uint8)
    reach = max(2, int(round(fraction * min(h, w)))) + 1
    padded = np.pad(inside, reach, constant_values=0)
    kernel = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    return ~cv2.erode(padded, kernel)[reach:-reach, reach:-reach].astype(bool)


def _clean(m: np.ndarray, field: np.ndarray | None = None) -> np.ndarray:
    """A hand mask without thin lines stuck to it (frame edges, rulers): an opening, then the
    largest piece. (A stronger opening near the film's edge was tried: it also trims the
    fingers a wrist view cuts, and lost more wrist views than it won frame lines.)"""
    import cv2

    def opened(k: int) -> np.ndarray:
        el = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        return cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, el).astype(bool)

    k = max(3, int(round(0.02 * max(m.shape))) | 1)
    out = opened(k)
    # frame lines along the film's edge: thin across, long along; a pixel there must have
    # some thickness both ways (fingers do, a 3-4 px line does not)
    edge = _near_film_edge(m.shape, field, 0.08)
    if (out & edge).any():
        u8 = out.astype(np.uint8)
        across = cv2.morphologyEx(u8, cv2.MORPH_OPEN, np.ones((5, 1), np.uint8))
        along = cv2.morphologyEx(u8, cv2.MORPH_OPEN, np.ones((1, 5), np.uint8))
        out = (out & ~edge) | (across.astype(bool) & along.astype(bool) & edge)
    return _largest(out) if out.any() else m


def _look_at(
    m: np.ndarray,
    field: np.ndarray | None,
    f: float,
    size: tuple[int, int],
    origin: tuple[int, int] = (0, 0),
) -> tuple[Any, ...]:
    """Orientation, shape and view of one hand mask: (k, tilt, shape, view, reason, box, mask,
    centre), ``box`` in original pixels; ``m`` is ``f`` times the film's size, its (0, 0) at
    ``origin`` on the film."""
    w, h = size
    raw, m = m, _clean(m, field)
    k, tilt = orientation(m)
    up = upright_mask(m, k, tilt)
    # where the anatomy leaves the film: on the mask as found (the cleaning trims the edge)
    top, bottom, edges = _edge_cuts(raw, field, 90.0 * k + tilt)
    field_area = float(field.sum()) if field is not None else float(m.size)
    fills = edges >= 4 and float(m.sum()) > 0.8 * field_area
    shape = measure(up, cut_top=top, cut_bottom=bottom, fills_film=fills)
    view, reason = classify_view(shape)
    ys, xs = np.nonzero(m)
    ox, oy = origin
    box = (
        max(0, ox + int(np.floor(xs.min() / f))),
        max(0, oy + int(np.floor(ys.min() / f))),
        min(w, ox + int(np.ceil((xs.max() + 1) / f))),
        min(h, oy + int(np.ceil((ys.max() + 1) / f))),
    )
    return (k, tilt, shape, view, reason, box, m, (float(xs.mean()), float(ys.mean())))


#: A hand whose working mask spans under this fraction of the working copy is measured again on
#: a finer copy of its own window (small hands on a big film: both-hands films, plates).
_REFINE_BELOW = 0.6
#: The longer side (pixels) of that finer copy.
_FINE = 256


@dataclass(frozen=True)
class _Window:
    """A hand's own finer copy: its tissue mask, the film field, the scale from the film and
    the window's origin (x, y) on the film."""

    mask: np.ndarray
    field: np.ndarray
    scale: float
    origin: tuple[int, int]


def _fine_window(
    img: np.ndarray, sm: SmallMask, m: np.ndarray, others: list[np.ndarray]
) -> _Window | None:
    """The hand of working mask ``m`` thresholded again on a finer copy of its window (the
    film's own tissue threshold; other hands and everything off the film left out), or None
    where the working copy is already about as fine. At 256 px for a whole film, the fingers
    of a hand a quarter of the film long are 2-3 px wide and the film edges within reach of
    every fingertip: orientation, view and thumb side are measured again here."""
    import cv2

    if sm.threshold is None or sm.field is None:
        return None
    h, w = img.shape
    sh, sw = m.shape
    f = sm.scale
    ys, xs = np.nonzero(m)
    span = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    if span >= _REFINE_BELOW * max(sh, sw):
        return None
    pad = 0.15 * span
    x0, y0 = max(0, int((xs.min() - pad) / f)), max(0, int((ys.min() - pad) / f))
    x1 = min(w, int(np.ceil((xs.max() + 1 + pad) / f)))
    y1 = min(h, int(np.ceil((ys.max() + 1 + pad) / f)))
    g = min(1.0, _FINE / max(x1 - x0, y1 - y0))
    if g < 1.5 * f:
        return None
    nw, nh = max(1, round((x1 - x0) * g)), max(1, round((y1 - y0) * g))
    crop = np.ascontiguousarray(img[y0:y1, x0:x1], dtype=np.float32)
    fine = cv2.resize(crop, (nw, nh), interpolation=cv2.INTER_AREA) if g < 1 else crop
    fine = cv2.GaussianBlur(fine, (0, 0), 1.0)
    jx = np.clip(((x0 + (np.arange(nw) + 0.5) / g) * sw / w).astype(int), 0, sw - 1)
    jy = np.clip(((y0 + (np.arange(nh) + 0.5) / g) * sh / h).astype(int), 0, sh - 1)
    other = _union_grown(m.shape, others)
    field = sm.field[np.ix_(jy, jx)]
    tissue = (fine > sm.threshold) & field & ~other[np.ix_(jy, jx)]
    band = _bands(tissue, field)
    tissue &= ~band
    field = field & ~band
    _, labels = cv2.connectedComponents(tissue.astype(np.uint8), connectivity=8)
    keep = np.unique(labels[m[np.ix_(jy, jx)] & tissue])
    keep = keep[keep > 0]
    if not len(keep):
        return None
    # the finer copy shows gaps between bone and soft tissue inside the hand, some open to the
    # finger webs: closed, and holes filled unless large (background closed in by the hand and
    # a strip of frame)
    hand = np.isin(labels, keep)
    k = max(3, int(round(0.02 * max(hand.shape))) | 1)
    el = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    hand = cv2.morphologyEx(hand.astype(np.uint8), cv2.MORPH_CLOSE, el).astype(bool) & field
    holes = ndimage.binary_fill_holes(hand) & ~hand
    n, lab, stats, _ = cv2.connectedComponentsWithStats(holes.astype(np.uint8), connectivity=4)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] < 0.005 * hand.size)
    hand |= np.isin(lab, small[small > 0])
    return _Window(hand, field, g, (x0, y0))


def _bands(
    tissue: np.ndarray, field: np.ndarray, run: float = 0.7, of_film: bool = False
) -> np.ndarray:
    """Straight strips across a hand's window against the film's edge: collimation bands and
    frames (brighter than the tissue threshold) that touch a fingertip or a forearm.

    A band crosses most of the window (``run`` of its width, or with ``of_film`` of the film's
    widest line, at most 20 degrees off its sides: tilted plates) with (almost) no film beyond
    it. A straight edge of the anatomy (a forearm,
    the side of a hand) has film beyond it, or is shorter. Returns the band pixels, grown by
    2 px (their blurred edges)."""
    import cv2

    h, w = tissue.shape
    d = int(np.ceil(np.hypot(h, w))) + 4
    out = np.zeros((h, w), np.uint8)
    for turn in (0, 1):
        u8 = np.ascontiguousarray(np.rot90(tissue, turn)).astype(np.uint8)
        film = np.ascontiguousarray(np.rot90(field, turn)).astype(np.uint8)
        hh, ww = u8.shape
        # thickened across, so that a thin line between two of the 2-degree steps stays whole
        thick = cv2.dilate(u8, np.ones((5, 1), np.uint8))
        length = max(3, int(run * ww))
        if of_film:  # of the film's width (a plate on a scanner bed is narrower than the image)
            length = max(3, int(run * float(np.rot90(field, turn).sum(axis=1).max())))
        found = np.zeros((hh, ww), np.uint8)
        for deg in range(-20, 21, 2):
            rot = cv2.getRotationMatrix2D((ww / 2, hh / 2), deg, 1.0)
            rot[:, 2] += ((d - ww) / 2, (d - hh) / 2)
            big = cv2.warpAffine(thick, rot, (d, d), flags=cv2.INTER_NEAREST)
            lines = _long_runs(big, length)
            if lines is None:
                continue
            film_rows = cv2.warpAffine(film, rot, (d, d), flags=cv2.INTER_NEAREST).sum(axis=1)
            rows = np.cumsum(film_rows)
            keep = np.zeros(d, bool)  # rows of the rotated canvas holding a band
            hit = np.flatnonzero(lines.any(axis=1))
            for group in np.split(hit, np.flatnonzero(np.diff(hit) > 1) + 1):
                y0, y1 = int(group[0]), int(group[-1]) + 1
                beyond = min(rows[y0 - 1] if y0 > 0 else 0, rows[-1] - rows[y1 - 1])
                keep[y0:y1] = beyond < 0.03 * rows[-1]
            if keep.any():
                back = cv2.invertAffineTransform(rot)
                lines[~keep] = 0
                moved = cv2.warpAffine(lines, back, (ww, hh), flags=cv2.INTER_NEAREST)
                found |= np.asarray(moved, np.uint8)
        out |= np.rot90(found & u8, -turn)
    if not out.any():
        return out.astype(bool)
    return cv2.dilate(out, np.ones((5, 5), np.uint8)).astype(bool)


def _long_runs(a: np.ndarray, length: int) -> np.ndarray | None:
    """The pixels of ``a`` (uint8, 0/1) in horizontal runs at least ``length`` long (None: none)."""
    rows = np.flatnonzero(a.sum(axis=1) >= length)
    if not len(rows):
        return None
    sub = np.pad(a[rows].astype(np.int8), ((0, 0), (1, 1)))
    d = np.diff(sub, axis=1)
    starts, ends = np.argwhere(d == 1), np.argwhere(d == -1)  # row-major: paired per row
    long = (ends[:, 1] - starts[:, 1]) >= length
    if not long.any():
        return None
    out = np.zeros(a.shape, np.uint8)
    for (r, x0), x1 in zip(starts[long], ends[long, 1], strict=True):
        out[rows[r], x0:x1] = 1
    return out


def _largest(m: np.ndarray) -> np.ndarray:
    """The largest 8-connected piece of a bool mask."""
    import cv2

    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n < 3:
        return m
    return np.asarray(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


def _look(
    m: np.ndarray, sm: SmallMask, img: np.ndarray, others: list[np.ndarray]
) -> tuple[Any, ...]:
    """:func:`_look_at` a hand, on its finer window where there is one; the mask and centre
    returned stay those of the working mask (the film's other hands are blanked with them)."""
    h, w = img.shape
    win = _fine_window(img, sm, m, others)
    if win is None:
        if sm.field is not None:
            band = _bands(m, sm.field)
            if band.any() and (m & ~band).any():
                return _look_at(_largest(m & ~band), sm.field & ~band, sm.scale, (w, h))
        return _look_at(m, sm.field, sm.scale, (w, h))
    found = _look_at(win.mask, win.field, win.scale, (w, h), win.origin)
    mw = _clean(m, sm.field)
    ys, xs = np.nonzero(mw)
    return (*found[:6], mw, (float(xs.mean()), float(ys.mean())))


def _refusal(view: str, reason: str, box: tuple[int, int, int, int]) -> FilmDecision:
    return FilmDecision(view=view, refused=True, reason=reason, box=box, warnings=(reason,))


def analyse(image: Any, hints: SideHints | None = None) -> list[FilmDecision]:
    """The decisions for every hand on a film (one refused decision when there is no hand).

    ``image``: a :class:`svdh.core.io.Radiograph` or a 2-D array. Pure geometry on the working
    mask; :func:`canonicalise` applies the decisions to the pixels.
    """
    return [d for d, _ in _analyse(as_float_image(image), hints)[0]]


def _find(img: np.ndarray, sm: SmallMask) -> list[tuple[Any, ...]]:
    """:func:`_look` at every hand-sized component of the film's mask (none: an empty list)."""
    assert sm.mask is not None
    comps = _components(sm.mask)
    found = [_look(m, sm, img, [o for o in comps if o is not m]) for m in comps]
    if len(found) == 2 and not all(t[3] == "hand" for t in found):
        # two pieces that are not two whole hands are one anatomy (a wrist view cut in two)
        found = [_look(comps[0] | comps[1], sm, img, [])]
    if len(comps) == 1 and sm.field is not None:
        # both hands of a film on a tilted plate can be joined by a band along the plate's edge
        # (plates are narrower than the image): cut off, two whole hands are two hands
        band = _bands(sm.mask, sm.field, of_film=True)
        if band.any():
            cut = replace(sm, mask=sm.mask & ~band, field=sm.field & ~band)
            two = _components(sm.mask & ~band)
            if len(two) == 2:
                again = [_look(m, cut, img, [o for o in two if o is not m]) for m in two]
                if all(t[3] == "hand" for t in again):
                    return again
    return found


def _analyse(
    img: np.ndarray, hints: SideHints | None
) -> tuple[list[tuple[FilmDecision, np.ndarray | None]], SmallMask | None]:
    """(decision, working-resolution mask of that hand) for each hand, and the film's mask."""
    h, w = img.shape
    whole = (0, 0, w, h)
    sm = small_mask(img)
    mask = sm.mask
    if mask is None or not mask.any():
        return [(_refusal("other", "no hand found: blank or featureless image", whole), None)], sm
    found = _find(img, sm)
    if all(t[3] == "other" for t in found):
        # no hand outline at the tissue threshold: faint soft tissue (a child's hand) under a
        # threshold that bright frames and markers pushed up to the bones; once more, lower
        low = small_mask(img, low=True)
        again = _find(img, low) if low.mask is not None and low.mask.any() else []
        if any(t[3] in ("hand", "wrist_only") for t in again):
            sm, mask, found = low, low.mask, again
    if not found:
        return [(_refusal("other", "no hand found", whole), None)], sm
    if not any(t[3] == "hand" for t in found) and _inverted_is_a_hand(img):
        reason = "inverted greyscale (bone dark): export the film as MONOCHROME2"
        return [(_refusal("inverted", reason, whole), None)], sm
    # left to right as the patient's film is read once upright (the first hand's turn)
    k0 = found[0][0]
    assert mask is not None
    centre = np.array([mask.shape[1] / 2, mask.shape[0] / 2])

    def upright_x(c: tuple[float, float]) -> float:
        v = np.array(c) - centre
        a = np.deg2rad(90.0 * k0)  # np.rot90 is counter-clockwise: x' = x cos + y sin
        return float(v[0] * np.cos(a) + v[1] * np.sin(a))

    found.sort(key=lambda t: upright_x(t[7]))
    found, guessed = _one_left_one_right(found)
    n = len(found)
    out = []
    for i, (k, tilt, shape, view, reason, box, m, _c) in enumerate(found):
        if view in REFUSED_VIEWS:
            d = _refusal(view, reason, box)
            out.append((replace(d, hand_index=i, n_hands=n, rotation_k=k, tilt_deg=tilt), m))
            continue
        thumb_right = shape.thumb_score > 0
        anatomy = "L" if thumb_right else "R"
        # PA both-hands film: the patient's right hand is on the image left
        position = ("R" if i == 0 else "L") if n == 2 else None
        side, source, conflicts = reconcile_side(anatomy, hints, position)
        warnings = list(conflicts)
        if view == "wrist_only":
            warnings.insert(0, WRIST_ONLY_WARNING)
        if abs(shape.thumb_score) < 0.02:
            warnings.append("thumb side unclear: the anatomy barely tells left from right")
        if i == guessed:
            warnings.append(PAIR_WARNING)
        d = FilmDecision(
            hand_index=i,
            n_hands=n,
            rotation_k=k,
            tilt_deg=round(tilt, 2),
            mirrored=not thumb_right,
            side=side,
            side_source=source,
            side_anatomy=anatomy,
            view=view,
            reason=reason,
            box=box,
            warnings=tuple(warnings),
        )
        out.append((d, m))
    return out, sm


PAIR_WARNING = (
    "thumb side unclear: both hands of the film looked like one side; this one, the less"
    " clear, is taken as the other"
)


def _one_left_one_right(found: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], int | None]:
    """A both-hands film holds a left and a right hand: where the thumb sides of its two hands
    agree, the less clear one (smaller thumb score) is turned round. Returns the hands and the
    index of the one turned round (None: none)."""
    if len(found) != 2 or any(t[3] in REFUSED_VIEWS for t in found):
        return found, None
    a, b = (float(t[2].thumb_score) for t in found)
    if (a > 0) != (b > 0):
        return found, None
    i = 0 if abs(a) < abs(b) else 1
    t = found[i]
    turned = (*t[:2], replace(t[2], thumb_score=-t[2].thumb_score), *t[3:])
    return [turned if j == i else found[j] for j in range(2)], i


def canonicalise(image: Any, hints: SideHints | None = None) -> list[CanonicalHand]:
    """Every hand on a film, turned fingers-up PA, shown as a left hand, with its decision.

    A refused film gives one :class:`CanonicalHand` whose decision is ``refused`` and whose
    pixels are the film as given (for display). Wrist-only hands are returned (with their
    warning); the caller leaves them out of patient totals (``decision.in_totals``).
    """
    img = as_float_image(image)
    results, sm = _analyse(img, hints)
    hands = []
    for d, m in results:
        if d.refused or m is None:
            hands.append(CanonicalHand(img, d))
            continue
        pixels, matrix, d = _canonical_pixels(img, d, m, results, sm)
        hands.append(CanonicalHand(pixels, d, matrix))
    return hands


@dataclass
class ModelInput:
    """One hand ready for a model: ``x`` (uint8, ``cfg.size`` square; None where refused), the
    crop's :class:`~svdh.core.preprocess.Transform` (from ``pixels``), the decision, and
    ``pixels``, the float image the crop was taken from (for display images)."""

    x: np.ndarray | None
    transform: Any
    decision: FilmDecision
    pixels: np.ndarray
    #: 2 x 3 affine from the film as given (x, y) to ``pixels`` (x, y): identity unless the
    #: hand was cut out of a both-hands film or turned.
    matrix: np.ndarray = field(default_factory=lambda: np.eye(2, 3))

    def film_to_input(self, xy: Any) -> np.ndarray:
        """Film (x, y) pixel coordinates (array ... x 2) to coordinates of the model input ``x``."""
        p = np.asarray(xy, dtype=np.float64)
        return self.transform.map_points(p @ self.matrix[:, :2].T + self.matrix[:, 2])

    def input_to_film(self, xy: Any) -> np.ndarray:
        """Model-input (x, y) coordinates back to the film as given (the inverse of
        :meth:`film_to_input`)."""
        q = self.transform.inverse(xy) - self.matrix[:, 2]
        return np.asarray(q @ np.linalg.inv(self.matrix[:, :2]).T)


def model_inputs(image: Any, cfg: Any = None, hints: SideHints | None = None) -> list[ModelInput]:
    """The canonical stage and the crop in one: one :class:`ModelInput` per hand of the film.

    With ``cfg.canonical`` each hand is turned fingers-up and shown as a left hand (what a model
    trained with it sees); without, a single-hand film is cropped as it is (exactly
    :func:`~svdh.core.preprocess.preprocess`, as older models were trained) and a both-hands
    film is cut into its hands unturned. The decisions (view, refusal, side, warnings) are made
    either way. Used by training caches, prediction, the web and explanations alike.
    """
    from svdh.core.preprocess import PreprocessConfig, preprocess

    cfg = cfg or PreprocessConfig()
    img = as_float_image(image)
    results, sm = _analyse(img, hints)
    out = []
    for d, m in results:
        if d.refused or m is None:
            out.append(ModelInput(None, None, d, img))
            continue
        matrix = np.eye(2, 3)
        if cfg.canonical:
            pixels, matrix, d = _canonical_pixels(img, d, m, results, sm)
        elif d.n_hands == 1:
            pixels = img
        else:
            flat = replace(d, rotation_k=0, tilt_deg=0.0, mirrored=False)
            others = _other_masks(results, m)
            pixels, matrix = _cut_and_turn(img, flat, m, others, sm)
        x, t = preprocess(pixels, cfg, return_transform=True)
        out.append(ModelInput(x, t, d, pixels, matrix))
    return out


def _canonical_pixels(
    img: np.ndarray,
    d: FilmDecision,
    m: np.ndarray,
    results: list[tuple[FilmDecision, np.ndarray | None]],
    sm: SmallMask | None,
) -> tuple[np.ndarray, np.ndarray, FilmDecision]:
    """The hand's canonical pixels, the 2 x 3 affine from the film, and the decision (its tilt
    the one applied): :func:`_upright_again` where it agrees, else cut and turned at once."""
    # a film already upright and left (no pixel move) is its own second look
    again = _upright_again(img, d) if d.rotation_k % 4 or d.mirrored else None
    if again is not None:
        return again
    others = _other_masks(results, m)
    pixels, matrix = _cut_and_turn(img, d, m, others, sm)
    return pixels, matrix, d


def _exact_turn(img: np.ndarray, k: int, mirrored: bool) -> tuple[np.ndarray, np.ndarray]:
    """The film turned by ``k`` counter-clockwise quarter turns, then mirrored: pixel moves
    without resampling. Returns the image and the 3 x 3 matrix of the move."""
    h, w = img.shape
    up = np.rot90(img, k)
    mat = _rot90_matrix(k, w, h)
    if mirrored:
        up = up[:, ::-1]
        mat = _mirror_matrix(up.shape[1]) @ mat
    return np.ascontiguousarray(up), mat


def _upright_again(
    img: np.ndarray, d: FilmDecision
) -> tuple[np.ndarray, np.ndarray, FilmDecision] | None:
    """The hand cut from the film once the film itself is turned upright by the decision.

    Quarter turns and mirrors are exact pixel moves, so the 8 rotations/mirrors of a film give
    one upright film; analysed again there, its box, tilt and crop come out the same to the
    pixel, where measuring each copy in its own orientation differs by a few pixels of
    working-resolution sampling. None where the second look disagrees (the hand is not found
    upright, or its thumb side turns): the caller then cuts and turns in one go."""
    up, turn = _exact_turn(img, d.rotation_k, d.mirrored)
    results, sm = _analyse(up, None)
    x0, y0, x1, y1 = d.box
    cx, cy = turn[:2] @ np.array([(x0 + x1) / 2, (y0 + y1) / 2, 1.0])
    for d2, m2 in results:
        bx0, by0, bx1, by1 = d2.box
        if d2.refused or m2 is None or not (bx0 <= cx <= bx1 and by0 <= cy <= by1):
            continue
        if d2.rotation_k != 0 or d2.mirrored:
            return None
        pixels, mat = _cut_and_turn(up, d2, m2, _other_masks(results, m2), sm)
        return pixels, (np.vstack([mat, [0, 0, 1.0]]) @ turn)[:2], replace(d, tilt_deg=d2.tilt_deg)
    return None


def _cut_and_turn(
    img: np.ndarray,
    d: FilmDecision,
    m: np.ndarray,
    others: list[np.ndarray],
    sm: SmallMask | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The hand's pixels, turned by the decision; with the 2 x 3 affine from the film.

    Other hands and everything off the film (collimation bands, the bed around a plate) are
    blanked to the film's dark level first: turned by a tilt they would no longer be the
    straight bands along the edges that the crop peels off."""
    h, w = img.shape
    x0, y0, x1, y1 = d.box
    pad = int(round(0.06 * max(x1 - x0, y1 - y0)))
    x0, y0, x1, y1 = max(0, x0 - pad), max(0, y0 - pad), min(w, x1 + pad), min(h, y1 + pad)
    crop = img[y0:y1, x0:x1].copy()
    blank = _union_grown(m.shape, others)
    if sm is not None and sm.field is not None:
        blank = blank | ~sm.field
    if blank.any():
        big = _upscale_window(blank, m.shape, (w, h), (x0, y0, x1, y1)) > 0
        if big.any() and (~big).sum() > 64:
            crop[big] = float(np.percentile(crop[~big], 2))
    # original (x, y) -> crop
    mat = np.array([[1.0, 0, -x0], [0, 1.0, -y0], [0, 0, 1.0]])
    ch, cw = crop.shape
    turned = np.ascontiguousarray(np.rot90(crop, d.rotation_k))
    mat = _rot90_matrix(d.rotation_k, cw, ch) @ mat
    if abs(d.tilt_deg) >= MIN_TILT:
        turned, tilt_mat = _rotate_image(turned, d.tilt_deg)
        mat = tilt_mat @ mat
    if d.mirrored:
        tw = turned.shape[1]
        turned = np.ascontiguousarray(turned[:, ::-1])
        mat = _mirror_matrix(tw) @ mat
    return turned, mat[:2]


def _upscale_window(
    small: np.ndarray,
    small_shape: tuple[int, int],
    size: tuple[int, int],
    window: tuple[int, int, int, int],
) -> np.ndarray:
    """The part of a working-resolution mask under ``window`` (x0, y0, x1, y1 in original
    pixels of a ``size`` = (w, h) film), at the original resolution (nearest neighbour)."""
    w, h = size
    sh, sw = small_shape
    x0, y0, x1, y1 = window
    fx, fy = sw / w, sh / h
    xs = np.clip(((np.arange(x0, x1) + 0.5) * fx).astype(int), 0, sw - 1)
    ys = np.clip(((np.arange(y0, y1) + 0.5) * fy).astype(int), 0, sh - 1)
    return small[np.ix_(ys, xs)]


def _other_masks(
    results: list[tuple[FilmDecision, np.ndarray | None]], m: np.ndarray
) -> list[np.ndarray]:
    """The working masks of the film's hands other than ``m``."""
    return [mm for _, mm in results if mm is not None and mm is not m]


def _union_grown(shape: tuple[int, ...], masks: list[np.ndarray]) -> np.ndarray:
    """The union of ``masks`` (bool, of ``shape``), grown by 2 px: what is blanked around them."""
    import cv2

    together = np.zeros(shape, np.uint8)
    for o in masks:
        together |= o.astype(np.uint8)
    return np.asarray(cv2.dilate(together, np.ones((5, 5), np.uint8)) > 0)


def _mirror_matrix(w: int) -> np.ndarray:
    """(x, y) of a w-wide image to (x, y) of its left-right mirror, as a 3 x 3 matrix."""
    return np.array([[-1.0, 0, w - 1.0], [0, 1.0, 0], [0, 0, 1.0]])


def _rot90_matrix(k: int, w: int, h: int) -> np.ndarray:
    """(x, y) of a w x h image to (x, y) of ``np.rot90(image, k)`` (counter-clockwise turns)."""
    m = np.eye(3)
    for _ in range(k % 4):
        # one counter-clockwise quarter turn: (x, y) -> (y, w - 1 - x); width and height swap
        m = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, w - 1.0], [0, 0, 1.0]]) @ m
        w, h = h, w
    return m


def _rotate_image(a: np.ndarray, deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotate counter-clockwise by ``deg`` on a canvas that holds it all, edges filled with the
    film's dark level; returns the image and the 3 x 3 matrix of the move."""
    import cv2

    h, w = a.shape
    rad = np.deg2rad(deg)
    nw = int(np.ceil(abs(w * np.cos(rad)) + abs(h * np.sin(rad))))
    nh = int(np.ceil(abs(w * np.sin(rad)) + abs(h * np.cos(rad))))
    rot = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), deg, 1.0)
    rot[0, 2] += (nw - w) / 2
    rot[1, 2] += (nh - h) / 2
    fill = float(np.percentile(a[:: max(1, h // 64), :: max(1, w // 64)], 2))
    out = cv2.warpAffine(
        a, rot, (nw, nh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )
    return out, np.vstack([rot, [0, 0, 1.0]])


__all__ = [
    "REFUSED_VIEWS",
    "VIEWS",
    "WRIST_ONLY_WARNING",
    "CanonicalHand",
    "FilmDecision",
    "Shape",
    "SideHints",
    "analyse",
    "ModelInput",
    "canonicalise",
    "model_inputs",
    "classify_view",
    "measure",
    "orientation",
    "reconcile_side",
    "thumb_score",
    "upright_mask",
]

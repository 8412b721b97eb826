"""Turn a decoded radiograph into the square uint8 image every model sees.

The one function :func:`preprocess` is used for training caches, evaluation and new images
alike, so a model never sees differently prepared pixels. Steps, in order:

1. **Crop to the hand.** On a copy reduced to ~256 px, (a) straight, featureless bands at the
   image edges are peeled off (collimation borders: unexposed film, scanner frames); (b) within
   the remaining field an Otsu threshold separates tissue from background; (c) a small opening
   cuts thin bright lines (tilted borders, rulers) and the connected components are filtered:
   border strips (long and thin along an edge) and small blobs (side markers "L"/"R", labels,
   dust) are dropped, every component of at least :data:`_KEEP_FRACTION` of the largest one is
   kept (both hands of a dual-hand film). Rings and other metal sit on the finger component and
   stay inside the box. The box gets a margin of ``cfg.margin`` of its longer side.
2. **Normalise intensities.** Black is the film around the hand (or the ``cfg.low_pct``
   percentile of the crop); white is the ``cfg.high_pct`` percentile of the crop or of the
   pixels INSIDE the hand mask, the lower of the two, so bright collimator frames and lead
   markers beside the hand never set it
   (exposure, film density and bit depth no longer matter).
3. **Pad to square** with black (the normalised background), keeping the aspect ratio.
4. **Resize** to ``cfg.size`` (area averaging when shrinking, bilinear when enlarging).
5. **Optional CLAHE** (OpenCV) on the uint8 result.

Everything is deterministic: the same pixels and config give the same bytes.
:func:`preprocess` can also return the :class:`Transform` it applied, which maps pixel
coordinates of the original image to the output (e.g. phantom joint landmarks to model input).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, overload

import numpy as np

from svdh.core.errors import BadConfigError

#: Bump when the algorithm changes output bytes: caches keyed on the config are then rebuilt.
ALGORITHM_VERSION = 3

#: Working resolution (longer side) of the hand detection.
_WORK = 256
#: A component is part of the hand when at least this fraction of the largest component.
_KEEP_FRACTION = 0.15


@dataclass(frozen=True)
class PreprocessConfig:
    """Parameters of :func:`preprocess` (stored with every cache, run and model bundle).

    ``size``: output side in pixels. ``crop``: crop to the hand (else the whole image is padded).
    ``margin``: margin around the hand box, as a fraction of its longer side.
    ``low_pct`` / ``high_pct``: percentiles mapped to black / white.
    ``clahe``: contrast-limited adaptive histogram equalisation after resizing, with
    ``clahe_clip`` (clip limit) and ``clahe_tiles`` (tiles per side).
    ``canonical``: turn every hand fingers-up and show it as a left-hand PA view before the
    crop (:func:`svdh.core.canonical.model_inputs`); records without the key (older runs and
    bundles) read as False, so their inputs stay as they were trained.
    """

    size: int = 256
    crop: bool = True
    margin: float = 0.04
    low_pct: float = 0.5
    high_pct: float = 99.5
    clahe: bool = False
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    canonical: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, (int, np.integer)) or not 8 <= int(self.size) <= 4096:
            raise BadConfigError(f"preprocess size must be an integer 8-4096, got {self.size!r}")
        if not 0 <= self.margin <= 1:
            raise BadConfigError(
                f"preprocess margin must be 0-1 (a fraction of the hand box), got {self.margin}"
            )
        if not 0 <= self.low_pct < self.high_pct <= 100:
            raise BadConfigError(
                f"percentiles must satisfy 0 <= low_pct < high_pct <= 100, got {self.low_pct}, {self.high_pct}"
            )
        if self.clahe_clip <= 0 or int(self.clahe_tiles) < 1:
            raise BadConfigError("clahe_clip must be > 0 and clahe_tiles >= 1")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "clahe_tiles", int(self.clahe_tiles))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON/YAML-safe) including the algorithm version."""
        return {**asdict(self), "algorithm_version": ALGORITHM_VERSION}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo must not pass silently)."""
        known = {f.name for f in fields(cls)}
        extra = set(d) - known - {"algorithm_version"}
        if extra:
            raise BadConfigError(f"unknown preprocessing option(s): {', '.join(sorted(extra))}")
        version = d.get("algorithm_version", ALGORITHM_VERSION)
        if version != ALGORITHM_VERSION:
            # Caches are keyed on to_dict() and rebuild by themselves; a model trained on
            # another version still runs, but its inputs are prepared slightly differently.
            warnings.warn(
                f"preprocessing parameters of algorithm version {version}; this svdh applies "
                f"version {ALGORITHM_VERSION} (crops may differ slightly from training)",
                stacklevel=2,
            )
        return cls(**{k: v for k, v in d.items() if k in known})

    @staticmethod
    def stored(record: Mapping[str, Any]) -> dict[str, Any]:
        """The preprocessing settings stored in a run's ``config.yaml`` or a bundle's
        manifest, as a dict with at least ``size`` (as stored: its algorithm version kept).

        The one read-compatibility shim: records written before the preprocessing was stored
        once keep a top-level ``image_size`` beside (or instead of) ``preprocess``; a
        ``preprocess`` section wins, ``image_size`` fills in a missing size. A record with
        neither is a :class:`BadConfigError` (there is no default size to guess).
        """
        pp = record.get("preprocess")
        d = dict(pp) if isinstance(pp, Mapping) else {}
        if "size" not in d:
            if record.get("image_size") is None:
                raise BadConfigError(
                    "no preprocessing settings (neither 'preprocess' nor 'image_size'); "
                    "retrain or re-export with this svdh"
                )
            d["size"] = int(record["image_size"])
        return d

    @classmethod
    def from_record(cls, record: Mapping[str, Any], warn: bool = True) -> PreprocessConfig:
        """:meth:`stored` as a config (``warn=False``: no warning for another algorithm version)."""
        d = cls.stored(record)
        if warn:
            return cls.from_dict(d)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_dict(d)


@dataclass(frozen=True)
class Transform:
    """The geometry :func:`preprocess` applied: a square window of the original image, scaled.

    The window ``[x0, x0 + side) x [y0, y0 + side)`` (original pixel units; it may reach past
    the image, where it was padded) is resized to ``size x size``. ``box`` is the detected
    hand box ``(x0, y0, x1, y1)`` before the margin and squaring. Coordinates follow the
    pixel-centre convention: ``(0, 0)`` is the centre of the top-left pixel, in and out.
    """

    x0: int
    y0: int
    side: int
    size: int
    width: int
    height: int
    box: tuple[int, int, int, int]

    @property
    def scale(self) -> float:
        """Output pixels per original pixel."""
        return self.size / self.side

    def map_points(self, xy: Any) -> np.ndarray:
        """Map original (x, y) pixel coordinates (array ... x 2) to output coordinates."""
        p = np.asarray(xy, dtype=np.float64)
        return (p + 0.5 - np.array([self.x0, self.y0])) * self.scale - 0.5

    def inverse(self, xy: Any) -> np.ndarray:
        """Map output (x, y) coordinates back to the original image."""
        p = np.asarray(xy, dtype=np.float64)
        return (p + 0.5) / self.scale + np.array([self.x0, self.y0]) - 0.5

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Transform:
        return cls(
            int(d["x0"]),
            int(d["y0"]),
            int(d["side"]),
            int(d["size"]),
            int(d["width"]),
            int(d["height"]),
            tuple(int(v) for v in d["box"]),  # type: ignore[arg-type]
        )


def as_float_image(image: Any) -> np.ndarray:
    """Pixels of a :class:`svdh.core.io.Radiograph` or an array, as float32 in [0, 1]."""
    arr = getattr(image, "pixels", image)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        arr = arr[..., :3].mean(axis=2)
    if arr.ndim != 2:
        raise BadConfigError(f"preprocess expects a 2-D greyscale image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    out = arr.astype(np.float32, copy=False)
    if not np.isfinite(float(out.min()) + float(out.max())):  # NaN/inf anywhere shows here
        out = np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)
    return out


@overload
def preprocess(
    image: Any, cfg: PreprocessConfig | None = ..., *, return_transform: Literal[False] = ...
) -> np.ndarray: ...
@overload
def preprocess(
    image: Any, cfg: PreprocessConfig | None = ..., *, return_transform: Literal[True]
) -> tuple[np.ndarray, Transform]: ...


def preprocess(
    image: Any, cfg: PreprocessConfig | None = None, *, return_transform: bool = False
) -> np.ndarray | tuple[np.ndarray, Transform]:
    """Crop to the hand, normalise, pad to square, resize: uint8 ``cfg.size x cfg.size``.

    ``image``: a :class:`svdh.core.io.Radiograph`, or a 2-D array (float in [0, 1], uint8 or uint16).
    With ``return_transform=True`` returns ``(array, Transform)``.
    """
    import cv2

    cfg = cfg or PreprocessConfig()
    img = as_float_image(image)
    h, w = img.shape
    if h == 0 or w == 0:
        raise BadConfigError("preprocess got an empty image")
    det = detect_hand(img) if cfg.crop else HandDetection((0, 0, w, h), None, False)
    box = det.box
    bx0, by0, bx1, by1 = box
    m = int(round(cfg.margin * max(bx1 - bx0, by1 - by0)))
    lx0, ly0, lx1, ly1 = det.film or (0, 0, w, h)  # the margin stops at collimation bands
    cx0, cy0, cx1, cy1 = max(lx0, bx0 - m), max(ly0, by0 - m), min(lx1, bx1 + m), min(ly1, by1 + m)
    crop = img[cy0:cy1, cx0:cx1]

    lo, hi = _percentiles(crop, cfg.low_pct, cfg.high_pct)
    # White is the hand's own brightest bone: the percentile is also taken inside the hand
    # mask, and the lower of the two wins, so that collimator frames and lead markers beside
    # the hand do not set the white point (and a ring, a larger share of the hand than of
    # the crop, does not either).
    inside = _hand_pixels(crop, det, (cx0, cy0, cx1, cy1))
    if inside is not None:
        hi = min(hi, _percentiles(inside, cfg.low_pct, cfg.high_pct)[1])
    # Black is the film around the hand where it is visible: a percentile would land on frame
    # lines or markers in the crop and wash the hand out.
    if det.background is not None and det.background < hi:
        lo = max(lo, det.background)
    norm = np.clip((crop - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(crop)

    ch, cw = norm.shape
    side = max(ch, cw)
    top, left = (side - ch) // 2, (side - cw) // 2
    square = np.zeros((side, side), np.float32)
    square[top : top + ch, left : left + cw] = norm
    interp = cv2.INTER_AREA if side >= cfg.size else cv2.INTER_LINEAR
    out = cv2.resize(square, (cfg.size, cfg.size), interpolation=interp)
    out = np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)
    if cfg.clahe:
        clahe = cv2.createCLAHE(
            clipLimit=float(cfg.clahe_clip), tileGridSize=(cfg.clahe_tiles, cfg.clahe_tiles)
        )
        out = clahe.apply(out)
    if not return_transform:
        return out
    return out, Transform(cx0 - left, cy0 - top, side, cfg.size, w, h, tuple(int(v) for v in box))  # type: ignore[arg-type]


#: Side of the images heat maps are drawn on (CLI overlays, the web page, the Grad-CAM
#: gallery): sharper than a 64-256 px model input, small enough for a page.
DISPLAY_SIZE = 512


def display_image(image: Any, cfg: PreprocessConfig | None = None) -> np.ndarray:
    """The model's input field at display resolution: :func:`preprocess` with the same config
    at ``max(cfg.size, DISPLAY_SIZE)`` px. The crop does not depend on the output size, so a
    heat map computed on the model input lines up with this sharper image."""
    cfg = cfg or PreprocessConfig()
    return preprocess(image, replace(cfg, size=max(cfg.size, DISPLAY_SIZE)))


def hand_mask(image: np.ndarray) -> np.ndarray:
    """The hand's pixels in a preprocessed radiograph: Otsu threshold, holes filled."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    img = np.asarray(image, dtype=np.float32)
    if float(img.max()) == float(img.min()):
        return np.ones(img.shape, dtype=bool)
    mask = img > threshold_otsu(img)
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)


def _hand_pixels(
    crop: np.ndarray, det: HandDetection, window: tuple[int, int, int, int]
) -> np.ndarray | None:
    """The crop's pixels inside the (upscaled) hand mask; None where the mask is missing or tiny."""
    import cv2

    if det.mask is None or not det.found:
        return None
    x0, y0, x1, y1 = window
    f = det.scale
    sx0, sy0 = int(np.floor(x0 * f)), int(np.floor(y0 * f))
    sx1, sy1 = int(np.ceil(x1 * f)), int(np.ceil(y1 * f))
    part = det.mask[sy0:sy1, sx0:sx1].astype(np.uint8)
    if part.sum() < 64:
        return None
    big = cv2.resize(part, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST).astype(bool)
    if big.shape != crop.shape or big.sum() < 256:
        return None
    return crop[big]


def _percentiles(a: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    # A strided subsample of ~250k pixels gives the same percentiles as the full image to
    # within a grey level, at a fraction of the cost for 20-megapixel films.
    if a.ndim == 1:
        sub = a[:: max(1, a.size // 250_000)]
    else:
        step = max(1, int(np.sqrt(a.size / 250_000)))
        sub = a[::step, ::step]
    lo, hi = np.percentile(sub, [lo_pct, hi_pct])
    return float(lo), float(hi)


# --------------------------------------------------------------------------- hand detection


@dataclass(frozen=True)
class HandDetection:
    """Where the hand is: ``box`` (x0, y0, x1, y1; exclusive ends) in original pixels, the
    ``background`` grey level around it (None where the hand leaves too little film), and
    ``film``, the area inside bright collimation bands (x0, y0, x1, y1), where a crop stops."""

    box: tuple[int, int, int, int]
    background: float | None
    found: bool
    film: tuple[int, int, int, int] | None = None
    #: the working-resolution hand mask (None where none was found) and its scale
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    scale: float = 1.0


def detect_hand(img: np.ndarray) -> HandDetection:
    """Find the hand(s) in a float image; the whole image where none is found."""
    h, w = img.shape
    mask, f, background, film = hand_mask_small(img)
    if mask is None or not mask.any():
        return HandDetection((0, 0, w, h), background, False)
    ys, xs = np.nonzero(mask)
    x0, y0 = max(0, int(np.floor(xs.min() / f))), max(0, int(np.floor(ys.min() / f)))
    x1, y1 = min(w, int(np.ceil((xs.max() + 1) / f))), min(h, int(np.ceil((ys.max() + 1) / f)))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return HandDetection((0, 0, w, h), background, False)
    film_box = None
    if film is not None:
        fy0, fy1, fx0, fx1 = film
        film_box = (
            min(x0, int(np.ceil(fx0 / f))),
            min(y0, int(np.ceil(fy0 / f))),
            max(x1, min(w, int(np.floor(fx1 / f)))),
            max(y1, min(h, int(np.floor(fy1 / f)))),
        )
    return HandDetection((x0, y0, x1, y1), background, True, film_box, mask, f)


def hand_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """Bounding box ``(x0, y0, x1, y1)`` (exclusive ends) of the hand(s) in original pixels."""
    return detect_hand(img).box


@dataclass(frozen=True)
class SmallMask:
    """The hand mask at working resolution (working = original * ``scale``).

    ``mask``: bool, or None when the image is too small or blank to analyse; ``background``:
    grey level of the film around the hand (None when too little is visible); ``film``:
    (y0, y1, x0, x1), the box inside bright collimation bands; ``field``: bool, the film area
    itself (inside a tilted plate where one lies on a scanner bed); ``plate_deg``: the plate's
    tilt (degrees, counter-clockwise), None where no plate was found; ``threshold``: the grey
    level (of the image as given) above which a pixel was counted as tissue.
    """

    mask: np.ndarray | None
    scale: float
    background: float | None = None
    film: tuple[int, int, int, int] | None = None
    field: np.ndarray | None = None
    plate_deg: float | None = None
    threshold: float | None = None


def hand_mask_small(
    img: np.ndarray,
) -> tuple[np.ndarray | None, float, float | None, tuple[int, int, int, int] | None]:
    """The hand mask at working resolution: ``(mask, scale, background, film)`` of
    :func:`small_mask` (kept for callers of the tuple form)."""
    sm = small_mask(img)
    return sm.mask, sm.scale, sm.background, sm.film


def small_mask(img: np.ndarray, low: bool = False) -> SmallMask:
    """Find the hand(s) on a ~256 px copy of ``img``: see :class:`SmallMask`.

    A film laid as a (tilted) plate on a scanner bed is first turned upright and cut to the
    plate, so that the plate's edges and its collimation bands are film edges, not tissue.
    ``low``: the tissue threshold is taken again below the usual one (background against faint
    soft tissue), for films where the usual one found no hand outline.
    """
    import cv2

    small, f = _work_image(img)
    if small is None:
        return SmallMask(None, f)
    sh, sw = small.shape
    plate = _find_plate(small)
    if plate is None:
        mask, background, film, t = _mask_in_field(small, low)
        field = np.zeros((sh, sw), bool)
        if film is not None:
            field[film[0] : film[1], film[2] : film[3]] = True
        return SmallMask(mask, f, background, film, field, threshold=t)
    warp, (pw, ph), deg = plate
    upright = cv2.warpAffine(
        small, warp, (pw, ph), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    mask_u, background, film_u, t = _mask_in_field(upright, low)
    inv = cv2.invertAffineTransform(warp)
    inside = np.zeros((ph, pw), np.uint8)
    if film_u is not None:
        inside[film_u[0] : film_u[1], film_u[2] : film_u[3]] = 1
    field = cv2.warpAffine(inside, inv, (sw, sh), flags=cv2.INTER_NEAREST).astype(bool)
    if mask_u is None:
        return SmallMask(None, f, background, None, field, deg)
    mask = cv2.warpAffine(mask_u.astype(np.uint8), inv, (sw, sh), flags=cv2.INTER_NEAREST)
    ys, xs = np.nonzero(field)
    film = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1) if len(ys) else None
    return SmallMask(mask.astype(bool) & field, f, background, film, field, deg, t)


def _work_image(img: np.ndarray) -> tuple[np.ndarray | None, float]:
    """The blurred working copy (longer side ~:data:`_WORK`) and its scale; None if blank/tiny."""
    import cv2

    h, w = img.shape
    f = min(1.0, _WORK / max(h, w))
    small = (
        cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        if f < 1
        else img.copy()
    )
    if min(small.shape) < 16:
        return None, f
    small = cv2.GaussianBlur(small, (0, 0), 1.0)
    p1, p99 = np.percentile(small, [1, 99])
    if float(p99 - p1) <= 1e-6:
        return None, f
    return small, f


def _find_plate(small: np.ndarray) -> tuple[np.ndarray, tuple[int, int], float] | None:
    """A film plate lying on a scanner bed of another grey: (affine to the upright plate, its
    size, tilt in degrees) or None.

    The bed is the region of the border's grey level connected to the image border; the plate
    is the rest where it fills its minimum-area rectangle (at least 85%), covers 15-95% of the
    image, and the bed shows on at least three sides.
    """
    import cv2

    sh, sw = small.shape
    b = max(2, int(0.02 * min(sh, sw)))
    ring = np.concatenate(
        [small[:b].ravel(), small[-b:].ravel(), small[:, :b].ravel(), small[:, -b:].ravel()]
    )
    bed = float(np.median(ring))
    if float(np.mean(np.abs(ring - bed) < 0.04)) < 0.6:
        return None  # no uniform bed all round (anatomy or bands reach the border)
    # the bed's noise sets how close to its grey a pixel must be to count as bed
    sigma = 1.4826 * float(np.median(np.abs(ring - bed)))
    tol = max(4.0 * sigma, 0.004)
    near_bed = cv2.morphologyEx(
        (np.abs(small - bed) < tol).astype(np.uint8), cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)
    )
    n, labels = cv2.connectedComponents(near_bed, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    bed_mask = np.isin(labels, edge_labels[edge_labels > 0]) & (near_bed > 0)
    rest = (~bed_mask).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(rest, connectivity=4)
    if n < 2:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = labels == i
    area = float(comp.sum())
    if not 0.15 * sh * sw <= area <= 0.95 * sh * sw:
        return None
    pts = np.column_stack(np.nonzero(comp)[::-1]).astype(np.float32)
    (cx, cy), (rw, rh), ang = cv2.minAreaRect(pts)
    if area < 0.85 * rw * rh:
        return None
    sides = sum(
        bool(bed_mask[region].mean() > 0.5)
        for region in (np.s_[:b, :], np.s_[-b:, :], np.s_[:, :b], np.s_[:, -b:])
    )
    if sides < 3:
        return None
    while ang > 45:  # the rectangle's tilt within +-45 degrees, sides swapped to match
        ang, rw, rh = ang - 90, rh, rw
    while ang <= -45:
        ang, rw, rh = ang + 90, rh, rw
    shrink = max(3, int(0.025 * min(rw, rh)))  # off each side: the plate edge is blurred
    pw, ph = max(16, int(rw) - 2 * shrink), max(16, int(rh) - 2 * shrink)
    rot = cv2.getRotationMatrix2D((cx, cy), ang, 1.0)
    rot[0, 2] += pw / 2 - cx
    rot[1, 2] += ph / 2 - cy
    return rot, (pw, ph), float(-ang)


def _mask_in_field(
    small: np.ndarray, low: bool = False
) -> tuple[np.ndarray | None, float | None, tuple[int, int, int, int] | None, float | None]:
    """(mask, background, film, threshold) of a working image whose edges are the film's
    edges; ``threshold`` in the image's grey levels."""
    import cv2

    span = float(np.subtract(*np.percentile(small, [99, 1])))
    # (a) Collimation borders: peel edge rows/columns that are flat (no anatomy crosses them).
    fy0, fy1, fx0, fx1 = _field(small, 0.08 * span)
    # (b) The tissue threshold, computed inside the field so that the frame does not bias it.
    lo, hi = np.percentile(small[fy0:fy1, fx0:fx1], [0.5, 99.5])
    if hi - lo <= 1e-6:
        return None, None, None, None
    u8_all = np.clip((small - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
    t = _tissue_threshold(u8_all[fy0:fy1, fx0:fx1], low)
    # Bright collimation bands (unexposed film) that the flat-line peel missed because they
    # are tilted or noisy: peel them by their grey level, so the forearm touching one does not
    # pull the band into the hand.
    bands = _bright_bands(u8_all, t)
    by0, by1, bx0, bx1 = bands
    fy0, fy1, fx0, fx1 = max(fy0, by0), min(fy1, by1), max(fx0, bx0), min(fx1, bx1)
    field, u8 = small[fy0:fy1, fx0:fx1], u8_all[fy0:fy1, fx0:fx1]
    mask = (u8 > t).astype(np.uint8)
    k = max(3, int(round(min(field.shape) * 0.015)) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    grown = _hand_components(mask, kernel)
    if grown is None:
        return None, None, None, None
    hand = mask & grown
    # The background level (for intensity normalisation): field pixels well away from the hand
    # and below the tissue threshold (markers and frames are above it).
    away = ~cv2.dilate(grown, kernel, iterations=2).astype(bool) & (mask == 0)
    background = float(np.median(field[away])) if away.sum() >= 0.02 * away.size else None
    full = np.zeros(small.shape, np.uint8)
    full[fy0:fy1, fx0:fx1] = hand
    full = _reclaim_strips(full, u8_all, t, (fy0, fy1, fx0, fx1), bands, kernel)
    film = _film_box(u8_all, t, (fy0, fy1, fx0, fx1), bands)
    return full.astype(bool), background, film, float(lo + (t + 0.5) / 255.0 * (hi - lo))


def _hand_components(mask: np.ndarray, kernel: np.ndarray) -> np.ndarray | None:
    """(c) The hand components of a thresholded field, grown back over what the opening cut.

    A small opening cuts thin lines and specks joined to the hand; border strips and markers
    are dropped, every component of at least :data:`_KEEP_FRACTION` of the largest one kept.
    Returns the kept components dilated twice (None where nothing is left).
    """
    import cv2

    fh, fw = mask.shape
    # Thin bright lines hugging the image edge (scanner frames) would join everything that
    # touches the edge; a band of 2% is left out of the component analysis and given back below.
    band = max(2, int(round(0.02 * min(fh, fw))))
    inner = mask.copy()
    inner[:band], inner[-band:], inner[:, :band], inner[:, -band:] = 0, 0, 0, 0
    opened = cv2.morphologyEx(inner, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(opened, connectivity=8)
    candidates = []
    for i in range(1, n):
        x, y, cw, ch, area = (int(v) for v in stats[i])
        if area < 0.002 * fh * fw or _is_border_strip(x, y, cw, ch, area, fw, fh):
            continue
        candidates.append((area, i))
    if not candidates:
        return None
    biggest = max(a for a, _ in candidates)
    # Small pieces are markers, labels or dust, unless the film edge cuts them: anatomy that
    # leaves the field (a thumb or finger on a wrist film) touches the edge, markers rarely do.
    keep = [
        i
        for a, i in candidates
        if a >= _KEEP_FRACTION * biggest
        or (a >= 0.03 * biggest and _touches_edge(stats[i], fw, fh, band + 1))
    ]
    lut = np.zeros(n, np.uint8)
    lut[keep] = 1
    # The opening trimmed fingertips and thin soft tissue: take back the thresholded pixels
    # within reach of the kept components (not the markers, which were dropped).
    return cv2.dilate(lut[labels], kernel, iterations=2)


def _reclaim_strips(
    full: np.ndarray,
    u8_all: np.ndarray,
    t: float,
    field: tuple[int, int, int, int],
    bands: tuple[int, int, int, int],
    kernel: np.ndarray,
) -> np.ndarray:
    """(d) A flat edge strip peeled in (a) may still hold an extremity that barely crosses it
    (a thumb tip in a corner). Where the strip is dark film (not a bright collimation band),
    tissue there that touches the hand belongs to it."""
    import cv2

    sh, sw = full.shape
    fy0, fy1, fx0, fx1 = field
    by0, by1, bx0, bx1 = bands
    strips = np.zeros((sh, sw), bool)
    region: tuple[slice, slice]
    for region in (np.s_[:fy0, :], np.s_[fy1:, :], np.s_[:, :fx0], np.s_[:, fx1:]):
        part = u8_all[region]
        if part.size and float(np.median(part)) <= t:
            strips[region] = True
    strips[fy0:fy1, fx0:fx1] = False
    outside_bands = np.zeros((sh, sw), bool)
    outside_bands[by0:by1, bx0:bx1] = True  # never grow into a bright collimation band
    strips &= outside_bands
    if not strips.any():
        return full
    # (through the edge band, which the component analysis left out)
    near = cv2.dilate(full, kernel, iterations=3).astype(bool) & outside_bands
    candidates_px = ((u8_all > t) & (strips | near)).astype(np.uint8) | full
    n2, lab2 = cv2.connectedComponents(candidates_px, connectivity=8)
    lut = np.zeros(n2, np.uint8)
    lut[np.unique(lab2[full > 0])] = 1
    lut[0] = 0
    return lut[lab2]


def _film_box(
    u8_all: np.ndarray, t: float, field: tuple[int, int, int, int], bands: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """The film proper: without bright bands nor bright flat strips (the crop margin stops there)."""
    fy0, fy1, fx0, fx1 = field
    by0, by1, bx0, bx1 = bands
    film = [by0, by1, bx0, bx1]
    for k, region in enumerate((np.s_[:fy0, :], np.s_[fy1:, :], np.s_[:, :fx0], np.s_[:, fx1:])):
        part = u8_all[region]
        if part.size and float(np.median(part)) > t:
            film[k] = (fy0, fy1, fx0, fx1)[k]
    film[0], film[2] = max(film[0], by0), max(film[2], bx0)
    film[1], film[3] = min(film[1], by1), min(film[3], bx1)
    return (film[0], film[1], film[2], film[3])


def _tissue_threshold(u8: np.ndarray, low: bool = False) -> float:
    """Grey level separating background from soft tissue.

    A two-class Otsu threshold often falls between soft tissue and bone when the hand fills
    much of the film, which splits the fingers off the palm. Three-class Otsu separates
    background | soft tissue | bone; its lower threshold is preferred, unless it marks more
    than 85% of the field (then it lies inside an uneven background) and the next higher
    candidate is taken.
    """
    import cv2
    from skimage.filters import threshold_multiotsu

    hist = np.bincount(u8.ravel(), minlength=256).astype(np.float64)
    otsu, _ = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    # 64 bins of 4 grey levels: 16 times faster and as good for a mask threshold.
    coarse = hist.reshape(64, 4).sum(axis=1)
    try:
        t_low, t_high = (
            float(t) for t in threshold_multiotsu(hist=(coarse, np.arange(64) * 4 + 1.5), classes=3)
        )
        candidates = sorted({t_low, float(otsu), t_high})
    except ValueError:  # too few grey levels for three classes
        candidates = [float(otsu)]
    n = u8.size
    chosen = next(
        (t for t in candidates if float(hist[int(np.floor(t)) + 1 :].sum()) / n <= 0.85),
        candidates[-1],
    )
    if not low:
        return chosen
    # ``low``: Otsu's threshold among the grey levels below the chosen one (background against
    # soft tissue, where brighter frames and markers made the three classes background, bone,
    # frame)
    below = u8[u8 <= chosen]
    if below.size < 16 or int(below.max()) == int(below.min()):
        return chosen
    t_low, _ = cv2.threshold(below.reshape(1, -1), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t_low) if float(hist[int(t_low) + 1 :].sum()) / n <= 0.85 else chosen


def _field(small: np.ndarray, tol: float) -> tuple[int, int, int, int]:
    """Rows/columns kept after peeling flat bands from each edge: (y0, y1, x0, x1).

    A row is flat when its central 70% varies less than ``tol`` (2nd-98th percentile): the
    outer 15% at each end is left out so that a band along the perpendicular edge (a frame
    corner) does not keep the row from counting as flat.
    """
    sh, sw = small.shape
    cy0, cy1 = int(0.15 * sh), max(int(0.15 * sh) + 1, int(0.85 * sh))
    cx0, cx1 = int(0.15 * sw), max(int(0.15 * sw) + 1, int(0.85 * sw))
    row_spread = np.subtract(*np.percentile(small[:, cx0:cx1], [98, 2], axis=1))
    col_spread = np.subtract(*np.percentile(small[cy0:cy1, :], [98, 2], axis=0))

    def peel(spread: np.ndarray, limit: int) -> int:
        flat = spread < tol
        n = int(np.argmin(flat)) if not flat.all() else len(flat)
        return min(n, limit)

    # No more than 35% from any side: a frame is never thicker, and a flat (blank) image
    # keeps its middle.
    y0 = peel(row_spread, int(0.35 * sh))
    y1 = sh - peel(row_spread[::-1], int(0.35 * sh))
    x0 = peel(col_spread, int(0.35 * sw))
    x1 = sw - peel(col_spread[::-1], int(0.35 * sw))
    return y0, y1, x0, x1


def _touches_edge(stat: np.ndarray, fw: int, fh: int, reach: int) -> bool:
    x, y, cw, ch = (int(v) for v in stat[:4])
    return x <= reach or y <= reach or x + cw >= fw - reach or y + ch >= fh - reach


def _bright_bands(u8: np.ndarray, t: float) -> tuple[int, int, int, int]:
    """Rows/columns kept after peeling bright, uniform bands from each edge: (y0, y1, x0, x1).

    A band starts at the edge (after at most 3% of dark frame lines) with a line clearly
    brighter than the tissue threshold ``t`` of which 90% lies within a tolerance of its median (a forearm
    reaching the edge leaves background beside it, so it does not qualify); the band goes on
    while 60% of a line keeps that level (a tilted band's inner lines are partly band).
    """
    sh, sw = u8.shape

    tol = 16  # grey levels of the field-normalised image: noise, not anatomy

    def depth(lines: np.ndarray) -> int:
        n = len(lines)
        limit = int(0.35 * n)
        if limit < 1:
            return 0
        outer = lines[: max(1, int(0.03 * n)) + 1].astype(np.int16)
        meds = np.median(outer, axis=1)
        start = int(np.argmax(meds > t)) if (meds > t).any() else len(meds)
        if start >= min(limit, len(meds) - 1) + 1 or start == len(meds):
            return 0  # no band: the edge lines are dark (a frame at most)
        level = float(meds[start])
        head = lines[start:limit].astype(np.int16)
        frac = (np.abs(head - level) <= tol).mean(axis=1)
        if level <= t + 2 * tol or frac[0] < 0.9:
            return 0
        run = frac >= 0.6  # a tilted band's inner lines are only partly band
        return start + (int(np.argmin(run)) if not run.all() else len(run))

    return depth(u8), sh - depth(u8[::-1]), depth(u8.T), sw - depth(u8.T[::-1])


def _is_border_strip(x: int, y: int, cw: int, ch: int, area: int, fw: int, fh: int) -> bool:
    """A component lying along one edge, long and thin: a collimation or scanner border."""
    fill = area / max(1, cw * ch)
    touches_h = (y <= 1 or y + ch >= fh - 1) and cw >= 0.5 * fw and ch <= 0.12 * fh
    touches_v = (x <= 1 or x + cw >= fw - 1) and ch >= 0.5 * fh and cw <= 0.12 * fw
    return (touches_h or touches_v) and fill > 0.3

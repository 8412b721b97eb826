"""The van der Heijde-modified Sharp (SvdH) score of the hands and wrists.

This module is the one place for three facts used everywhere else:

* the joint catalogue (which sites are scored, their range, their RA2-DREAM column names),
* how joint scores add up to per-hand and per-patient totals (with validation),
* how a total score maps to an ordinal severity class (the class bins).

Per hand: 16 erosion sites scored 0-5 (max 80) and 15 joint-space-narrowing (JSN)
sites scored 0-4 (max 60): 140 per hand, 280 for both hands and wrists.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from svdh.core.errors import BadConfigError, BadDatasetError

EROSION = "erosion"
JSN = "jsn"
SIDES = ("L", "R")


@dataclass(frozen=True)
class Joint:
    """One scored site of one hand.

    ``key`` is the project's canonical name (``ero_mcp2``, ``jsn_radcar``),
    ``dream`` the RA2-DREAM column suffix (``mcp_E__2``), the column for a hand
    being ``f"{side}H_{dream}"``. ``anatomy`` names the bones or joint, and
    ``landmark`` the phantom landmark (``mcp2``, ``radcar``...) where it sits.
    """

    key: str
    kind: str  # EROSION or JSN
    region: str  # "ip", "pip", "mcp" or "wrist"
    dream: str
    anatomy: str
    landmark: str

    @property
    def max_score(self) -> int:
        return 5 if self.kind == EROSION else 4

    def column(self, side: str) -> str:
        """The RA2-DREAM column of this joint for hand ``side`` ('L' or 'R')."""
        return f"{_check_side(side)}H_{self.dream}"


def _erosion(key: str, region: str, dream: str, anatomy: str, landmark: str) -> Joint:
    return Joint(f"ero_{key}", EROSION, region, dream, anatomy, landmark)


def _jsn(key: str, region: str, dream: str, anatomy: str, landmark: str) -> Joint:
    return Joint(f"jsn_{key}", JSN, region, dream, anatomy, landmark)


EROSION_JOINTS: tuple[Joint, ...] = (
    _erosion("ip", "ip", "mcp_E__ip", "thumb interphalangeal joint", "ip1"),
    *(
        _erosion(f"pip{d}", "pip", f"pip_E__{d}", f"proximal interphalangeal joint {d}", f"pip{d}")
        for d in range(2, 6)
    ),
    *(
        _erosion(f"mcp{d}", "mcp", f"mcp_E__{d}", f"metacarpophalangeal joint {d}", f"mcp{d}")
        for d in range(1, 6)
    ),
    _erosion("mc1", "wrist", "wrist_E__mc1", "base of metacarpal 1", "mc1base"),
    _erosion("mul", "wrist", "wrist_E__mul", "trapezium and trapezoid", "trapezium"),
    _erosion("nav", "wrist", "wrist_E__nav", "scaphoid (navicular)", "scaphoid"),
    _erosion("lunate", "wrist", "wrist_E__lunate", "lunate", "lunate"),
    _erosion("radius", "wrist", "wrist_E__radius", "distal radius", "radius"),
    _erosion("ulna", "wrist", "wrist_E__ulna", "distal ulna", "ulna"),
)

JSN_JOINTS: tuple[Joint, ...] = (
    *(
        _jsn(f"pip{d}", "pip", f"pip_J__{d}", f"proximal interphalangeal joint {d}", f"pip{d}")
        for d in range(2, 6)
    ),
    *(
        _jsn(f"mcp{d}", "mcp", f"mcp_J__{d}", f"metacarpophalangeal joint {d}", f"mcp{d}")
        for d in range(1, 6)
    ),
    _jsn("cmc3", "wrist", "wrist_J__cmc3", "carpometacarpal joint 3", "cmc3"),
    _jsn("cmc4", "wrist", "wrist_J__cmc4", "carpometacarpal joint 4", "cmc4"),
    _jsn("cmc5", "wrist", "wrist_J__cmc5", "carpometacarpal joint 5", "cmc5"),
    _jsn("mna", "wrist", "wrist_J__mna", "trapezium-scaphoid joint", "stt"),
    _jsn("capnlun", "wrist", "wrist_J__capnlun", "capitate-scaphoid-lunate joint", "capnlun"),
    _jsn("radcar", "wrist", "wrist_J__radcar", "radiocarpal joint", "radcar"),
)

JOINTS: tuple[Joint, ...] = EROSION_JOINTS + JSN_JOINTS
JOINTS_BY_KEY: dict[str, Joint] = {j.key: j for j in JOINTS}

MAX_EROSION_HAND = sum(j.max_score for j in EROSION_JOINTS)  # 80
MAX_JSN_HAND = sum(j.max_score for j in JSN_JOINTS)  # 60
MAX_HAND = MAX_EROSION_HAND + MAX_JSN_HAND  # 140
MAX_PATIENT = 2 * MAX_HAND  # 280

#: Landmarks a phantom or annotation may carry: every scored joint's site.
LANDMARKS: tuple[str, ...] = tuple(dict.fromkeys(j.landmark for j in JOINTS))


def _check_side(side: str) -> str:
    s = str(side).upper()[:1]
    if s not in SIDES:
        raise BadConfigError(f"hand side must be 'L' or 'R', got {side!r}")
    return s


def joint_columns(side: str, kind: str | None = None) -> list[str]:
    """RA2-DREAM column names of one hand, optionally of one kind (erosion or jsn)."""
    return [j.column(side) for j in JOINTS if kind is None or j.kind == kind]


@dataclass(frozen=True)
class HandScore:
    erosion: float
    jsn: float

    @property
    def total(self) -> float:
        return self.erosion + self.jsn


def hand_score(row: Mapping[str, object], side: str, row_id: str = "?") -> HandScore:
    """Sum one hand's joint columns of an RA2-DREAM-style row, validating every joint.

    A missing, non-numeric or out-of-range joint score raises :class:`BadDatasetError`
    naming the joint column and the row.
    """
    ero = jsn = 0.0
    for joint in JOINTS:
        col = joint.column(side)
        if col not in row:
            raise BadDatasetError(
                f"row {row_id}: column {col!r} ({joint.anatomy}) is missing; "
                "every hand joint column of the RA2-DREAM layout is required"
            )
        value = row[col]
        try:
            v = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise BadDatasetError(
                f"row {row_id}: {col} ({joint.anatomy}) = {value!r} is not a number"
            ) from None
        if not np.isfinite(v):
            raise BadDatasetError(f"row {row_id}: {col} ({joint.anatomy}) is missing (NaN)")
        if v < 0 or v > joint.max_score:
            raise BadDatasetError(
                f"row {row_id}: {col} ({joint.anatomy}) = {value} is out of range "
                f"0-{joint.max_score} for {joint.kind}"
            )
        if joint.kind == EROSION:
            ero += v
        else:
            jsn += v
    return HandScore(ero, jsn)


def patient_score(row: Mapping[str, object], row_id: str = "?") -> HandScore:
    """Both hands and wrists of one patient row: erosion, JSN and total (0-280)."""
    left, right = hand_score(row, "L", row_id), hand_score(row, "R", row_id)
    return HandScore(left.erosion + right.erosion, left.jsn + right.jsn)


# --------------------------------------------------------------------------- severity classes

#: Lower bounds of classes 1..6 for a hands-and-wrists total (both hands, 0-280):
#: 0 | 1-4 | 5-9 | 10-19 | 20-39 | 40-79 | 80-280
DEFAULT_PATIENT_EDGES: tuple[float, ...] = (1, 5, 10, 20, 40, 80)


@dataclass(frozen=True)
class SeverityBins:
    """Ordinal severity classes of a total score.

    ``edges`` are the lower bounds of classes 1..K-1 on the integer score scale
    (class 0 starts at 0). A score ``s`` falls in class ``k`` when
    ``edges[k-1] - step/2 <= s < edges[k] - step/2``, ``step`` being 1 for integer
    totals, so continuous predictions are binned as if rounded to the nearest score.
    """

    edges: tuple[float, ...] = DEFAULT_PATIENT_EDGES
    max_score: float = MAX_PATIENT
    step: float = 1.0
    labels: tuple[str, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        e = tuple(float(x) for x in self.edges)
        if len(e) < 1 or any(b <= a for a, b in zip(e, e[1:], strict=False)) or e[0] <= 0:
            raise BadConfigError(
                f"severity class edges must be positive and strictly increasing, got {list(self.edges)}"
            )
        if e[-1] > self.max_score:
            raise BadConfigError(
                f"severity class edge {e[-1]} exceeds the maximum score {self.max_score}"
            )
        object.__setattr__(self, "edges", e)
        if not self.labels:
            object.__setattr__(self, "labels", self._make_labels())

    @classmethod
    def patient(cls, edges: Sequence[float] | None = None) -> SeverityBins:
        """Bins for a hands-and-wrists total of both hands (0-280)."""
        return cls(tuple(edges or DEFAULT_PATIENT_EDGES), MAX_PATIENT, 1.0)

    @classmethod
    def hand(cls, edges: Sequence[float] | None = None) -> SeverityBins:
        """Bins for one hand (0-140): the patient edges halved unless ``edges`` are given."""
        if edges is not None:
            return cls(tuple(edges), MAX_HAND, 1.0)
        return cls(tuple(e / 2 for e in DEFAULT_PATIENT_EDGES), MAX_HAND, 0.5)

    @classmethod
    def for_scope(cls, scope: str, edges: Sequence[float] | None = None) -> SeverityBins:
        if scope == "patient":
            return cls.patient(edges)
        if scope == "hand":
            return cls.hand(edges)
        raise BadConfigError(f"score scope must be 'patient' or 'hand', got {scope!r}")

    @property
    def n_classes(self) -> int:
        return len(self.edges) + 1

    @property
    def thresholds(self) -> np.ndarray:
        """Score thresholds between consecutive classes."""
        return np.asarray(self.edges, dtype=np.float64) - self.step / 2

    def to_class(self, score: float | Iterable[float] | np.ndarray) -> np.ndarray | int:
        """Map score(s) to class index(es) 0..K-1; scores are clipped to [0, max_score]."""
        arr = np.clip(np.asarray(score, dtype=np.float64), 0.0, self.max_score)
        cls = np.searchsorted(self.thresholds, arr, side="right")
        return int(cls) if np.ndim(cls) == 0 else cls.astype(np.int64)

    def bounds(self, k: int) -> tuple[float, float]:
        """Inclusive range (low, high) of the whole-number scores in class ``k``.

        Totals are sums of whole joint scores, so a class is labelled by the whole numbers it
        holds: the per-hand default (patient edges halved) reads ``0 | 1-2 | 3-4 | 5-9 ...``.
        """
        t = self.thresholds
        lo = 0.0 if k == 0 else float(np.ceil(t[k - 1]))
        hi = float(self.max_score) if k == self.n_classes - 1 else float(np.ceil(t[k]) - 1)
        return lo, hi

    @property
    def representative_scores(self) -> np.ndarray:
        """One score per class, used to turn class probabilities into an expected score.

        The midpoint of each class range; the open-ended top class is capped at twice
        its lower bound, since RA cohorts rarely reach the scale's maximum.
        """
        reps = []
        for k in range(self.n_classes):
            lo, hi = self.bounds(k)
            if k == self.n_classes - 1:
                hi = min(hi, 2 * lo)
            reps.append((lo + hi) / 2)
        return np.asarray(reps, dtype=np.float64)

    def expected_score(self, probs: np.ndarray) -> np.ndarray:
        """Expected score from class probabilities (rows sum to 1)."""
        return np.asarray(probs, dtype=np.float64) @ self.representative_scores

    def _make_labels(self) -> tuple[str, ...]:
        out = []
        for k in range(self.n_classes):
            lo, hi = self.bounds(k)
            out.append(f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "max_score": self.max_score, "step": self.step}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SeverityBins:
        return cls(tuple(d["edges"]), float(d["max_score"]), float(d.get("step", 1.0)))

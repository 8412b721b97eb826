"""One phantom patient and its radiographs: random streams, anatomy, disease, film.

Every random choice comes from a :class:`numpy.random.SeedSequence` keyed by
``(seed, patient index, image/side, purpose)``, so a patient is the same whatever the cohort
size or the number of worker processes, and the pose, film, texture, noise and each joint's
lesions have streams of their own (changing one joint's score changes nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from svdh.core import scoring
from svdh.core.errors import BadConfigError
from svdh.synth.anatomy import Hand, HandShape, build_hand
from svdh.synth.damage import PatientDisease, apply_damage, no_damage, sample_patient
from svdh.synth.render import compose, place_hand, sample_film

MODES = ("ra", "child")
#: Field of view of one hand image, mm (the image is square).
FIELD_MM = (200.0, 240.0)
_SIDE_CODE = {"L": 1, "R": 2, "B": 3}
_POSE, _FILM, _TEX, _NOISE, _LESIONS, _BODY, _DISEASE = range(7)


def _seq(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(int(seed), spawn_key=tuple(int(k) for k in key))


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(_seq(seed, *key))


@dataclass
class Patient:
    """A phantom patient: body proportions plus RA disease (``ra``) or age and sex (``child``)."""

    seed: int
    index: int
    patient_id: str
    mode: str
    scale: float
    ray_scale: tuple[float, ...]
    width_scale: float
    soft_scale: float
    disease: PatientDisease | None = None
    boneage_months: int | None = None
    male: bool | None = None
    child_side: str = "L"
    #: Which film of this patient: 0 is the cohort's; :mod:`svdh.synth.visits` draws others
    #: (new positioning, exposure, noise and marker over the same anatomy and lesions).
    film: int = 0

    @property
    def maturity(self) -> float | None:
        """Skeletal maturity in male-equivalent years (girls mature ~15 % earlier), or None."""
        if self.boneage_months is None:
            return None
        return self.boneage_months / 12.0 * (1.0 if self.male else 1.15)


#: Hand size through growth, as a fraction of the adult male hand, by maturity in years.
_GROWTH_AGE = (0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 25.0)
_GROWTH_SIZE = (0.36, 0.45, 0.5, 0.58, 0.65, 0.71, 0.77, 0.84, 0.92, 0.98, 1.0, 1.0)


def make_patient(
    seed: int,
    index: int,
    mode: str = "ra",
    severity: str = "cohort",
    total: int | None = None,
    id_prefix: str = "SYN",
) -> Patient:
    """Draw patient ``index`` of the cohort with ``seed``."""
    if mode not in MODES:
        raise BadConfigError(f"unknown phantom mode {mode!r}; use one of {', '.join(MODES)}")
    body = _rng(seed, index, 0, _BODY)
    # RA is ~3:1 female: the cohort's hands average a little below the adult male hand
    scale = float(np.clip(body.normal(0.95, 0.06), 0.8, 1.1))
    ray = tuple(float(np.clip(body.normal(1.0, 0.025), 0.94, 1.06)) for _ in range(5))
    width = float(np.clip(body.normal(1.0, 0.05), 0.88, 1.12))
    soft = float(np.clip(body.normal(1.0, 0.1), 0.8, 1.25))
    if mode == "ra":
        disease = sample_patient(_rng(seed, index, 0, _DISEASE), severity, total)
        return Patient(
            seed,
            index,
            f"{id_prefix}{index + 1:05d}",
            mode,
            scale,
            ray,
            width,
            soft,
            disease=disease,
        )
    months = int(body.integers(0, 229))  # 0-19 years, uniform
    male = bool(body.random() < 0.5)
    side = "L" if body.random() < 0.9 else "R"
    p = Patient(
        seed,
        index,
        str(index + 1),
        mode,
        scale,
        ray,
        width,
        soft,
        boneage_months=months,
        male=male,
        child_side=side,
    )
    m = p.maturity or 0.0
    p.scale = scale * float(np.interp(m, _GROWTH_AGE, _GROWTH_SIZE)) * (1.0 if male else 0.93)
    return p


@dataclass
class RenderedImage:
    """One radiograph with its ground truth."""

    image: np.ndarray  # float32 H x W in [0, 1], bright = dense
    sides: tuple[str, ...]  # hands in the image, left to right in the image
    landmarks: dict[str, dict[str, tuple[float, float]]]  # side -> landmark -> (x, y) pixels
    scores: dict[str, dict[str, int]]  # side -> joint key -> score ({} in child mode)
    px_per_mm: float
    joint_radius_px: float
    extra: dict = field(default_factory=dict)


def _hand(
    patient: Patient,
    side: str,
    scores: dict[str, int] | None,
    pose: np.random.Generator,
    lesion_seq: np.random.SeedSequence,
) -> Hand:
    deviation = patient.disease.deviation if patient.disease is not None else 0.0
    shape = HandShape(
        scale=patient.scale,
        ray_scale=patient.ray_scale,
        spread=float(pose.uniform(0.15, 1.5)),
        spread_jitter=tuple(float(pose.normal(0.0, 2.0)) for _ in range(5)),
        flexion=tuple(float(abs(pose.normal(0.0, 9.0))) for _ in range(5)),
        ulnar_deviation=deviation * float(pose.uniform(0.7, 1.0)),
        width_scale=patient.width_scale,
        soft_scale=patient.soft_scale,
    )
    hand = build_hand(shape, maturity=patient.maturity)
    ring = pose.random() < (0.08 if patient.mode == "ra" else 0.01)
    finger = int(pose.choice([4, 4, 4, 3, 5]))
    where = float(pose.uniform(0.28, 0.45))
    if ring:
        hand.ring_finger, hand.ring_at = finger, where
    if patient.disease is not None:
        apply_damage(
            hand,
            scores if scores is not None else no_damage(),
            lesion_seq,
            patient.disease.activity,
            patient.disease.bone_density,
        )
    return hand


def _field_px_per_mm(patient: Patient, size: int, pose: np.random.Generator) -> float:
    f = float(pose.uniform(*FIELD_MM))
    if patient.mode == "child":
        # a child's film is collimated to the hand: the field shrinks with the hand
        f = float(np.clip(f * max(patient.scale, 0.55) * 1.05, 110.0, FIELD_MM[1]))
    return size / f


def render_patient(
    patient: Patient,
    size: int = 512,
    side: str = "L",
    *,
    scores: dict[str, int] | None = None,
    with_film: bool = True,
) -> RenderedImage:
    """Render one hand (``side`` 'L'/'R') or both hands side by side (``side='B'``).

    ``scores`` overrides the patient's joint scores of a single hand (for controlled
    experiments: the same hand with and without damage at one joint).
    """
    if side not in _SIDE_CODE:
        raise BadConfigError(f"side must be 'L', 'R' or 'B' (both hands), got {side!r}")
    if size < 32:
        raise BadConfigError(f"image size must be at least 32 px, got {size}")
    code = _SIDE_CODE[side]
    seed, idx = patient.seed, patient.index
    fk = (patient.film,) if patient.film else ()  # film 0 keeps the cohort's streams
    film_rng = _rng(seed, idx, code, _FILM, *fk)
    film = sample_film(film_rng)
    sides = ("R", "L") if side == "B" else (side,)  # both hands: the right hand on the image's left
    H, W = size, size * len(sides)
    placed = []
    boxes = []
    all_scores: dict[str, dict[str, int]] = {}
    k = None
    for i, sd in enumerate(sides):
        pose = _rng(seed, idx, _SIDE_CODE[sd], _POSE, *fk)
        kk = _field_px_per_mm(patient, size, pose)
        k = kk if k is None else k  # both hands of one film share its scale
        sc = None
        if patient.disease is not None:
            sc = dict(patient.disease.scores[sd])
            if scores is not None and side != "B":
                sc = dict(scores)
            all_scores[sd] = sc
        hand = _hand(patient, sd, sc, pose, _seq(seed, idx, _SIDE_CODE[sd], _LESIONS))
        box = (i * size, 0, (i + 1) * size, size)
        place = place_hand(hand, sd, box, k, pose, tips_may_be_cut=film.tips_may_be_cut)
        placed.append((hand, place, sd))
        boxes.append(box)
    img = compose(
        placed,
        (H, W),
        film,
        _rng(seed, idx, code, _TEX),
        _rng(seed, idx, code, _NOISE, *fk),
        boxes,
        with_film=with_film,
    )
    landmarks = {
        sd: {
            name: tuple(float(v) for v in place.apply(hand.landmarks[name]))
            for name in scoring.LANDMARKS
        }
        for hand, place, sd in placed
    }
    assert k is not None
    return RenderedImage(img, sides, landmarks, all_scores, k, joint_radius_px=6.0 * k)


def render_hand(
    seed: int = 0,
    index: int = 0,
    side: str | None = None,
    size: int = 512,
    mode: str = "ra",
    severity: str = "cohort",
    scores: dict[str, int] | None = None,
    with_film: bool = True,
) -> RenderedImage:
    """Render one phantom radiograph: patient ``index`` of cohort ``seed``.

    ``side``: 'L', 'R' or 'B' (both hands on one film); by default the left hand in RA mode and
    the child's own side (mostly left) in child mode, as ``svdh synth`` draws them.

    ``scores`` (joint key -> SvdH score, e.g. ``{"ero_mcp2": 3}``; missing joints are 0)
    replaces the patient's own scores of that hand; everything else (anatomy, pose, film,
    noise) stays the same, so two calls differing only in ``scores`` differ only at the
    joints whose scores differ.
    """
    patient = make_patient(seed, index, mode, severity)
    if scores is not None:
        bad = [k for k in scores if k not in scoring.JOINTS_BY_KEY]
        if bad:
            raise BadConfigError(
                f"unknown joint key(s) {bad}; use keys of svdh.core.scoring.JOINTS such as 'ero_mcp2'"
            )
        for k, v in scores.items():
            mx = scoring.JOINTS_BY_KEY[k].max_score
            if not 0 <= int(v) <= mx:
                raise BadConfigError(f"score {k}={v} out of range 0-{mx}")
        scores = {**no_damage(), **{k: int(v) for k, v in scores.items()}}
    if side is None:
        side = patient.child_side if mode == "child" else "L"
    return render_patient(patient, size, side, scores=scores, with_film=with_film)


def quantize(img: np.ndarray, bits: int = 8) -> np.ndarray:
    """Float image in [0, 1] to uint8 or uint16 (round half to even, deterministic)."""
    if bits == 8:
        return np.rint(np.clip(img, 0, 1) * 255.0).astype(np.uint8)
    if bits == 16:
        return np.rint(np.clip(img, 0, 1).astype(np.float64) * 65535.0).astype(np.uint16)
    raise BadConfigError(f"bits must be 8 or 16, got {bits}")

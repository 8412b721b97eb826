"""The disease model of the phantom: who gets how much damage where, and what it looks like.

Two layers:

* **Scores** (:func:`sample_patient`): a latent severity per patient (the target total of both
  hands and wrists, drawn from a cohort-like, uniform, healthy or fixed distribution), spread
  over the 62 scored sites of the two hands by a Polya urn whose weights combine
  joint-specific propensities (MCPs, PIPs, the ulnar styloid and the wrist most), a joint
  effect shared by both hands (RA is symmetric), a hand effect and an erosive-versus-narrowing
  tendency. The urn's reinforcement makes damage cluster in some joints, as in real films.
  Totals are exact: the sum of the joint scores *is* the drawn total.
* **Lesions** (:func:`apply_damage`): turn each joint's SvdH scores into geometry on the
  bones of :mod:`svdh.synth.anatomy` - cortical defects at the joint's bone ends (more and
  larger with the erosion score, a destroyed articular surface at 5), a narrower joint space
  (JSN 1 focal, 2-3 narrower, 4 ankylosis with the subchondral plates gone), plus the
  confounders SvdH does not score: periarticular osteopenia and soft-tissue swelling at
  inflamed joints, generalised osteopenia and ulnar deviation with the patient's severity.

Lesion geometry of each joint is drawn from that joint's own random stream, so changing one
joint's score changes the pixels around that joint only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from svdh.core import scoring
from svdh.core.errors import BadConfigError
from svdh.synth.anatomy import Bone, Capsule, Hand, Hole, narrowed_gap

# Relative propensity of each site (by joint key) to be damaged, from the RA imaging
# literature: MCP2/3, MCP5, PIPs, the ulnar styloid and the wrist lead; thumb joints lag.
EROSION_PROPENSITY: dict[str, float] = {
    "ero_ip": 0.45,
    "ero_pip2": 0.75,
    "ero_pip3": 0.95,
    "ero_pip4": 0.75,
    "ero_pip5": 0.8,
    "ero_mcp1": 0.45,
    "ero_mcp2": 1.2,
    "ero_mcp3": 1.1,
    "ero_mcp4": 0.7,
    "ero_mcp5": 1.2,
    "ero_mc1": 0.45,
    "ero_mul": 0.6,
    "ero_nav": 0.9,
    "ero_lunate": 0.8,
    "ero_radius": 0.8,
    "ero_ulna": 1.3,
}
JSN_PROPENSITY: dict[str, float] = {
    "jsn_pip2": 0.9,
    "jsn_pip3": 1.0,
    "jsn_pip4": 0.9,
    "jsn_pip5": 0.8,
    "jsn_mcp1": 0.45,
    "jsn_mcp2": 1.0,
    "jsn_mcp3": 1.0,
    "jsn_mcp4": 0.8,
    "jsn_mcp5": 0.8,
    "jsn_cmc3": 0.9,
    "jsn_cmc4": 0.8,
    "jsn_cmc5": 0.8,
    "jsn_mna": 1.0,
    "jsn_capnlun": 1.3,
    "jsn_radcar": 1.1,
}
PROPENSITY: dict[str, float] = {**EROSION_PROPENSITY, **JSN_PROPENSITY}
JOINT_KEYS: tuple[str, ...] = tuple(j.key for j in scoring.JOINTS)

SEVERITIES = ("cohort", "uniform", "balanced", "healthy", "severe")


def parse_severity(spec: str) -> tuple[str, float | None]:
    """``cohort`` | ``uniform`` | ``balanced`` | ``healthy`` | ``severe`` | ``fixed:N`` (N = patient total 0-280)."""
    s = str(spec).strip().lower()
    if s in SEVERITIES:
        return s, None
    if s.startswith("fixed:"):
        try:
            n = float(s.split(":", 1)[1])
        except ValueError:
            n = -1.0
        if not 0 <= n <= scoring.MAX_PATIENT or n != int(n):
            raise BadConfigError(
                f"severity {spec!r}: fixed:N needs a whole patient total N in 0-{scoring.MAX_PATIENT}"
            )
        return "fixed", n
    raise BadConfigError(
        f"unknown severity {spec!r}; use one of {', '.join(SEVERITIES)} or fixed:N"
    )


def draw_patient_total(rng: np.random.Generator, severity: str) -> int:
    """The latent severity of one patient, as a hands-and-wrists total (0-280)."""
    kind, value = parse_severity(severity)
    if kind == "fixed":
        return int(value)  # type: ignore[arg-type]
    if kind == "healthy":
        return 0
    if kind == "uniform":
        return int(rng.integers(0, scoring.MAX_PATIENT + 1))
    if kind == "balanced":
        # uniform over the default severity classes, then uniform within the class
        bins = scoring.SeverityBins.patient()
        lo, hi = bins.bounds(int(rng.integers(0, bins.n_classes)))
        return int(rng.integers(int(lo), int(hi) + 1))
    if kind == "severe":
        return int(rng.integers(80, scoring.MAX_PATIENT + 1))
    # cohort: about 30 % without damage, the rest log-normal (median ~12, a tail past 100)
    if rng.random() < 0.3:
        return 0
    return int(min(scoring.MAX_PATIENT, max(1, round(math.exp(rng.normal(2.5, 1.25))))))


@dataclass
class PatientDisease:
    """Scores and patient-level confounders of one patient."""

    total: int
    scores: dict[str, dict[str, int]]  # side 'L'/'R' -> joint key -> score
    activity: float  # inflammatory activity 0-1 (swelling, periarticular osteopenia)
    bone_density: float  # generalised bone density factor (osteopenia with severity)
    deviation: float  # ulnar deviation at the MCPs, degrees
    extra: dict[str, float] = field(default_factory=dict)

    def hand_total(self, side: str) -> int:
        return int(sum(self.scores[side].values()))

    def hand_erosion(self, side: str) -> int:
        return int(sum(v for k, v in self.scores[side].items() if k.startswith("ero_")))

    def hand_jsn(self, side: str) -> int:
        return int(sum(v for k, v in self.scores[side].items() if k.startswith("jsn_")))


def allocate(rng: np.random.Generator, total: int) -> dict[str, dict[str, int]]:
    """Spread ``total`` score points over both hands' joints (Polya urn; exact sum)."""
    keys = JOINT_KEYS
    n = len(keys)
    maxs = np.array([scoring.JOINTS_BY_KEY[k].max_score for k in keys] * 2, dtype=np.int64)
    prop = np.array([PROPENSITY[k] for k in keys], dtype=np.float64)
    joint_eff = np.exp(rng.normal(0.0, 0.6, n))  # shared by both hands: symmetry
    hand_eff = np.exp(rng.normal(0.0, 0.25, 2))
    erosive = math.exp(rng.normal(0.0, 0.45))
    kind = np.array([erosive if k.startswith("ero_") else 1.0 / erosive for k in keys])
    w = np.concatenate(
        [prop * joint_eff * kind * hand_eff[h] * np.exp(rng.normal(0.0, 0.35, n)) for h in range(2)]
    )
    s = np.zeros(2 * n, dtype=np.int64)
    total = int(min(total, maxs.sum()))
    beta = 1.1  # reinforcement: damage begets damage at the same joint
    for _ in range(total):
        p = w * (1.0 + beta * s) * (s < maxs)
        c = np.cumsum(p)
        i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
        s[min(i, 2 * n - 1)] += 1
    return {
        "L": {k: int(v) for k, v in zip(keys, s[:n], strict=True)},
        "R": {k: int(v) for k, v in zip(keys, s[n:], strict=True)},
    }


def sample_patient(
    rng: np.random.Generator, severity: str = "cohort", total: int | None = None
) -> PatientDisease:
    """Draw one patient's joint scores and confounders."""
    t = draw_patient_total(rng, severity) if total is None else int(total)
    scores = allocate(rng, t)
    sev = t / scoring.MAX_PATIENT
    activity = float(
        np.clip(
            rng.beta(2.0, 3.0) * (0.3 + 0.9 * math.sqrt(sev)) if t > 0 else rng.uniform(0, 0.08),
            0,
            1,
        )
    )
    bmd = float(np.clip(rng.normal(1.0, 0.07) - 0.45 * sev**0.8, 0.4, 1.2))
    deviation = float(sev**0.8 * rng.uniform(0.0, 28.0))
    return PatientDisease(t, scores, activity, bmd, deviation)


def no_damage() -> dict[str, int]:
    """A hand with every joint scored 0."""
    return {k: 0 for k in JOINT_KEYS}


# --------------------------------------------------------------------------- lesions

#: Bones carrying each erosion site (wrist) and, for finger joints, the joint name.
_WRIST_EROSION_BONES = {
    "ero_mc1": ("mc1", "base"),
    "ero_mul": ("trapezium", "trapezoid"),
    "ero_nav": ("scaphoid",),
    "ero_lunate": ("lunate",),
    "ero_radius": ("radius", "head"),
    "ero_ulna": ("ulna", "head"),
}
_FINGER_EROSION_JOINT = {
    "ero_ip": "ip1",
    **{f"ero_pip{d}": f"pip{d}" for d in range(2, 6)},
    **{f"ero_mcp{d}": f"mcp{d}" for d in range(1, 6)},
}


def lesion_radii(rng: np.random.Generator, score: int) -> list[tuple[float, float, bool]]:
    """(radius mm, depth, seen en face) of the cortical defects of an erosion score 1-5.

    Score 1 is one defect 1-2 mm across; higher scores add defects and enlarge them; some
    defects are seen en face (partial depth) rather than in profile.
    """
    if score <= 0:
        return []
    table = {
        1: (1, 0.5, 0.9),
        2: (2, 0.65, 1.15),
        3: (3, 0.9, 1.6),
        4: (4, 1.1, 1.9),
        5: (3, 1.2, 2.0),
    }
    n, lo, hi = table[min(score, 5)]
    out = []
    for i in range(n):
        en_face = score >= 2 and i > 0 and rng.random() < 0.3
        # a defect seen in profile removes most, not all, of the bone in the beam's path
        out.append(
            (float(rng.uniform(lo, hi)), 0.5 if en_face else float(rng.uniform(0.8, 0.95)), en_face)
        )
    return out


def _marginal_hole(
    bone: Bone, u: float, side: int, r: float, depth: float, en_face: bool, rng: np.random.Generator
) -> Hole:
    w = float(bone.width(np.array([u]))[0])
    if en_face:  # seen through the bone: inside the outline
        return Hole(u, side * w * float(rng.uniform(0.1, 0.6)), r, depth)
    return Hole(u, side * w * float(rng.uniform(0.85, 1.0)), r, depth)


def _erode_finger_joint(
    hand: Hand, joint: str, score: int, jsn: int, rng: np.random.Generator
) -> None:
    j = hand.joints[joint]
    prox, dist = hand.bones[j.prox], hand.bones[j.dist]
    lesions = lesion_radii(rng, score)
    for r, depth, en_face in lesions:
        side = 1 if rng.random() < 0.5 else -1
        if rng.random() < 0.55:  # head of the proximal bone: its bare areas
            u = prox.length - prox.lh * float(rng.uniform(0.5, 1.15))
            prox.holes.append(_marginal_hole(prox, u, side, r, depth, en_face, rng))
        else:  # base of the distal bone
            u = j.dist_u + dist.lb * float(rng.uniform(0.2, 0.9))
            dist.holes.append(_marginal_hole(dist, u, side, r, depth, en_face, rng))
    if score >= 4 and jsn < 4:
        # the articular surface itself: ragged bites out of the subchondral bone; at 5 the
        # surface is destroyed (several overlapping bites shorten and flatten the bone end)
        n = 2 if score == 4 else 4
        for _ in range(n):
            r = float(rng.uniform(0.3, 0.45) if score == 4 else rng.uniform(0.38, 0.6)) * prox.wh
            v = float(rng.uniform(-0.75, 0.75)) * prox.wh
            prox.holes.append(
                Hole(
                    prox.length + 0.25 * r - float(rng.uniform(0, 0.25)) * prox.lh,
                    v,
                    r,
                    0.7 if score == 4 else 1.0,
                )
            )
        if score == 5:
            for _ in range(3):
                r = float(rng.uniform(0.32, 0.5)) * dist.wb
                v = float(rng.uniform(-0.7, 0.7)) * dist.wb
                dist.holes.append(
                    Hole(j.dist_u - 0.2 * r + float(rng.uniform(0, 0.2)) * dist.lb, v, r, 1.0)
                )


def _erode_bone(bone: Bone, score: int, rng: np.random.Generator, end: str | None = None) -> None:
    for r, depth, en_face in lesion_radii(rng, score):
        side = 1 if rng.random() < 0.5 else -1
        if end == "base":
            u = bone.lb * float(rng.uniform(0.3, 1.6))
        elif end == "head":
            u = bone.length - bone.lh * float(rng.uniform(0.3, 2.2))
        else:
            u = bone.length * float(rng.uniform(0.15, 0.85))
        # carpal and wrist defects are partly hidden by the bone in front of and behind them
        bone.holes.append(
            _marginal_hole(
                bone, u, side, r, depth * (0.8 if bone.kind == "ovoid" else 1.0), en_face, rng
            )
        )
    if score >= 5:  # collapse: ragged bites through the bone end
        w = bone.wb if end != "head" else bone.wh
        for _ in range(3):
            if end == "base":
                u = float(rng.uniform(0.0, 0.6)) * bone.lb
            elif end == "head":
                u = bone.length - float(rng.uniform(0.0, 0.8)) * bone.lh
            else:
                u = bone.length * float(rng.uniform(0.3, 0.7))
            bone.holes.append(
                Hole(u, float(rng.uniform(-0.8, 0.8)) * w, float(rng.uniform(0.3, 0.45)) * w, 0.75)
            )


def joint_rng(seed_seq: np.random.SeedSequence, key: str, purpose: int = 0) -> np.random.Generator:
    """The random stream of one joint's lesions (independent of every other joint)."""
    idx = JOINT_KEYS.index(key)
    return np.random.default_rng(
        np.random.SeedSequence(
            seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, 7000 + idx + 1000 * purpose)
        )
    )


def apply_damage(
    hand: Hand,
    scores: dict[str, int],
    seed_seq: np.random.SeedSequence,
    activity: float = 0.0,
    bone_density: float = 1.0,
) -> None:
    """Draw the lesions of ``scores`` (joint key -> SvdH score) into ``hand``, in place."""
    for b in hand.bones.values():
        if not b.metal:
            b.density *= bone_density
            b.cortex_density *= 0.75 + 0.25 * bone_density
            b.c_shaft *= 0.7 + 0.3 * min(bone_density, 1.0)
    for key, value in scores.items():
        if key.startswith("jsn_") and value > 0:
            _narrow_joint(hand, key, value, seed_seq)
    # erosions, osteopenia and swelling, joint by joint
    for key in JOINT_KEYS:
        e = scores.get(key, 0) if key.startswith("ero_") else 0
        rng = joint_rng(seed_seq, key)
        landmark = scoring.JOINTS_BY_KEY[key].landmark
        jsn_key = "jsn_" + key[4:] if key.startswith("ero_") else key
        jsn = scores.get(jsn_key, 0) if jsn_key in scores else 0
        if key.startswith("ero_"):
            if key in _FINGER_EROSION_JOINT:
                _erode_finger_joint(hand, _FINGER_EROSION_JOINT[key], e, jsn, rng)
            else:
                names = _WRIST_EROSION_BONES[key]
                end = names[-1] if names[-1] in ("base", "head") else None
                bones = [n for n in names if n not in ("base", "head")]
                for i, name in enumerate(bones):
                    share = e if len(bones) == 1 else (e + 1 - i) // 2 if i == 0 else e // 2
                    _erode_bone(hand.bones[name], share, rng, end)
        # inflammation at this site: periarticular osteopenia and swelling
        ero = scores.get("ero_" + key[4:], 0) if key.startswith("jsn_") else e
        if key.startswith("jsn_") and ("ero_" + key[4:]) in scores:
            continue  # a site with both scores is handled once, with its erosion key
        burden = ero / 5.0 * 0.6 + jsn / 4.0 * 0.4
        inflamed = burden > 0 and rng.random() < 0.35 + 0.6 * activity
        amount = (0.4 * burden + (0.12 * activity if inflamed else 0.0)) if burden > 0 else 0.0
        _osteopenia(hand, landmark, min(amount, 0.5))
        if inflamed:
            _swell(hand, landmark, activity, rng)


def _narrow_joint(hand: Hand, key: str, value: int, seed_seq: np.random.SeedSequence) -> None:
    """Joint-space narrowing of grade ``value`` at JSN joint ``key``: only the joint's cutters
    change; at grade 4 (ankylosis) the subchondral plates and the articular cortex thin too."""
    joint = scoring.JOINTS_BY_KEY[key].landmark
    j = hand.joints[joint]
    side = 1.0 if joint_rng(seed_seq, key, purpose=1).random() < 0.5 else -1.0
    for bone_name, idx in j.cutters:
        bone = hand.bones[bone_name]
        cut = bone.cutters[idx]
        if value == 1 and cut.ellipse is not None:
            # focal narrowing: the space loses a little in the middle and most on one side
            # (the convex surface shifted sideways): narrowed_gap() is its narrowest width
            e = cut.ellipse
            shift = side * 0.35 * bone.e_v
            cut.ellipse = replace(e, cx=e.cx + float(shift[0]), cy=e.cy + float(shift[1]))
            cut.gap = max(0.25, j.gap - 0.1)
        else:
            cut.gap = narrowed_gap(j.gap, value)
        if value >= 4:
            cut.plate = 0.0
    if value < 4:
        return
    convex = hand.bones[j.prox]
    if convex.kind == "long":
        convex.c_head = 0.12
    else:
        convex.c_end = min(convex.c_end, 0.3)
    for bone_name, idx in j.cutters:
        b = hand.bones[bone_name]
        e = b.cutters[idx].ellipse
        if b.kind == "ovoid":
            b.c_end = min(b.c_end, 0.3)
        elif e is not None and b.to_local(np.array([e.cx, e.cy]))[0] > b.length / 2:
            b.c_head = 0.12
        else:
            b.c_base = 0.12


def _swell(hand: Hand, landmark: str, activity: float, rng: np.random.Generator) -> None:
    """Soft-tissue swelling at an inflamed finger joint (fusiform) or at the ulnar styloid."""
    if landmark in hand.joints and landmark.startswith(("mcp", "pip", "ip")):
        # fusiform: a spindle along the finger, a little wider than the finger
        j = hand.joints[landmark]
        c = j.center
        d = hand.bones[j.dist].e_u
        r = j.soft_radius * float(1.08 + 0.22 * rng.random() * (0.5 + activity))
        half = 0.9 * r
        hand.soft.swellings.append(Capsule(tuple(c - d * half), tuple(c + d * half), r, r))
    elif landmark == "ulna":
        c = hand.landmarks["ulna"] + np.array([-4.0, 0.0])
        r = float(7.0 + 5.0 * rng.random())
        hand.soft.swellings.append(Capsule(tuple(c), tuple(c + np.array([0.0, 6.0])), r, r))


def _osteopenia(hand: Hand, landmark: str, amount: float) -> None:
    if amount <= 0:
        return
    if landmark.startswith(("mcp", "pip", "ip")):
        j = hand.joints[landmark]
        prox, dist = hand.bones[j.prox], hand.bones[j.dist]
        prox.osteo.append((prox.length, amount, min(0.22 * prox.length, 9.0) + 2.0))
        dist.osteo.append((0.0, amount, min(0.22 * dist.length, 9.0) + 2.0))
        return
    names = {
        "mc1base": ("mc1",),
        "trapezium": ("trapezium", "trapezoid"),
        "scaphoid": ("scaphoid",),
        "lunate": ("lunate",),
        "radius": ("radius",),
        "ulna": ("ulna",),
        "cmc3": ("mc3", "capitate"),
        "cmc4": ("mc4", "hamate"),
        "cmc5": ("mc5", "hamate"),
        "stt": ("scaphoid", "trapezium"),
        "capnlun": ("capitate", "lunate"),
        "radcar": ("radius", "lunate", "scaphoid"),
    }.get(landmark, ())
    for n in names:
        b = hand.bones[n]
        if b.kind == "ovoid":
            b.osteo.append((b.length / 2, 0.6 * amount, b.length))
        elif n in ("radius", "ulna"):
            b.osteo.append((b.length, amount, 12.0))
        else:
            b.osteo.append((0.0, amount, min(0.22 * b.length, 9.0) + 2.0))

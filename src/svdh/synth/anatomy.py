"""Geometry of a phantom hand: bones, joints, soft tissue and landmarks, in millimetres.

The *hand frame* is a left hand seen posterior-anterior: ``x`` points to the radial (thumb)
side, ``y`` distally (towards the finger tips); the origin is the proximal end of the third
metacarpal. A right hand is the mirror image, applied when the hand is placed in the image
(:mod:`svdh.synth.render`), so every bone is described once.

Every bone is a solid of revolution about its own axis (``u`` along the axis from its proximal
end, ``v`` across it), with a half-width profile ``W(u)``: a base cap, a waisted shaft and a
head cap (``kind='long'``: metacarpals, phalanges, radius, ulna) or a plain ellipse
(``kind='ovoid'``: carpal bones, sesamoids, epiphyses). A solid of revolution projects to a
chord ``2 sqrt(W(u)^2 - v^2)``; its cortex is the same solid minus an inward offset by the
cortical thickness, so the projection shows bright cortical rims and subchondral plates by
construction. Joints are made by *cutters*: the convex member of a joint (a metacarpal head,
the capitate head...) is kept whole and the concave member loses everything within the
convex one grown by the joint-space width, so the two articular surfaces are congruent and
the joint space has exactly the width asked for. Joint-space narrowing changes that width
only, so bones never move when a joint is damaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# --------------------------------------------------------------------------- primitives


@dataclass
class Ellipse:
    """An ellipse in the hand frame: centre, semi-axis ``a`` along direction ``angle``
    (radians from +y towards +x) and semi-axis ``b`` across it."""

    cx: float
    cy: float
    a: float
    b: float
    angle: float
    p: float = 2.0  # superellipse exponent (2: ellipse; larger: squarer)


@dataclass
class Cutter:
    """Removes from a bone everything within ``ellipse`` grown by ``gap`` (mm).

    With ``plane`` instead (a point and an outward unit normal in the hand frame) it removes
    the half-plane beyond the point (shifted back by ``gap``). ``plate`` is the thickness of
    the subchondral bone plate left along the cut (0: none, as in an ankylosed joint).
    """

    gap: float
    plate: float
    ellipse: Ellipse | None = None
    plane: tuple[float, float, float, float] | None = None  # px, py, nx, ny
    source: str = ""  # the bone whose outline (or head) this is, "" for planes
    residual: float = 0.0  # fraction of bone left in the space (3-D overlap of carpal surfaces)


@dataclass
class Hole:
    """A cortical defect (erosion) in bone-local coordinates: centre ``(u, v)``, radius ``r``
    (mm), ``depth`` the fraction of the bone's thickness removed there (1: through and
    through, as a marginal erosion seen in profile)."""

    u: float
    v: float
    r: float
    depth: float = 1.0


@dataclass
class Lobe:
    """An extra ellipsoid joined to a bone (a styloid process), in bone-local coordinates."""

    u: float
    v: float
    a: float
    b: float


@dataclass
class Bone:
    """One bone. See the module docstring for the local frame and the profile."""

    name: str
    x: float
    y: float
    angle: float
    length: float
    kind: str = "long"  # 'long' or 'ovoid'
    p: float = 2.0  # 'ovoid': superellipse exponent of the outline
    wb: float = 5.0  # half-width of the base cap ('ovoid': the half-width)
    ws: float = 3.0  # half-width of the shaft waist
    wh: float = 4.0  # half-width of the head cap
    lb: float = 4.0  # length (semi-axis) of the base cap
    lh: float = 4.0  # length (semi-axis) of the head cap
    c_shaft: float = 1.2  # cortical thickness of the shaft
    c_end: float = 0.5  # cortical thickness at the ends (subchondral plate)
    c_base: float | None = None  # override of c_end at the base (fused joint: thin)
    c_head: float | None = None  # override of c_end at the head
    flare: float = 0.0  # > 0: the shaft widens to the head over this length (distal radius, ulna)
    density: float = 1.0  # trabecular (medullary) density factor
    cortex_density: float = 1.0
    metal: bool = False
    lobes: list[Lobe] = field(default_factory=list)
    cutters: list[Cutter] = field(default_factory=list)
    holes: list[Hole] = field(default_factory=list)
    osteo: list[tuple[float, float, float]] = field(default_factory=list)  # (u, amount, scale)

    # -- frame
    @property
    def e_u(self) -> np.ndarray:
        return np.array([math.sin(self.angle), math.cos(self.angle)])

    @property
    def e_v(self) -> np.ndarray:
        return np.array([math.cos(self.angle), -math.sin(self.angle)])

    @property
    def origin(self) -> np.ndarray:
        return np.array([self.x, self.y])

    def to_hand(self, u: float, v: float = 0.0) -> np.ndarray:
        return self.origin + u * self.e_u + v * self.e_v

    def to_local(self, p: np.ndarray) -> tuple[float, float]:
        d = np.asarray(p, dtype=float) - self.origin
        return float(d @ self.e_u), float(d @ self.e_v)

    # -- shape
    def width(self, u: np.ndarray) -> np.ndarray:
        """Half-width profile W(u) of the solid of revolution (0 outside the bone)."""
        u = np.asarray(u, dtype=np.float64)
        L = self.length
        if self.kind == "ovoid":
            t = np.abs(2.0 * u / L - 1.0)
            if self.p == 2.0:
                return self.wb * np.sqrt(np.clip(1.0 - t * t, 0.0, None))
            return self.wb * np.clip(1.0 - t**self.p, 0.0, None) ** (1.0 / self.p)
        lb, lh = self.lb, self.lh
        tb = (u - lb) / lb
        base = self.wb * np.sqrt(np.clip(1.0 - tb * tb, 0.0, None))
        th = (u - (L - lh)) / lh
        head = self.wh * np.sqrt(np.clip(1.0 - th * th, 0.0, None))
        span = max(L - lh - lb, 1e-3)
        t = np.clip((u - lb) / span, 0.0, 1.0)
        tau = 0.16
        if self.flare > 0:
            # a metaphysis that widens smoothly over `flare` mm up to the head
            f = np.clip((u - (L - self.lh - self.flare)) / self.flare, 0.0, 1.0)
            head_side = (0.97 * self.wh - self.ws) * f * f * (3 - 2 * f)
        else:
            head_side = (0.90 * self.wh - self.ws) * np.exp(-(1.0 - t) / tau)
        shaft = self.ws + (0.93 * self.wb - self.ws) * np.exp(-t / tau) + head_side
        inside = (u >= 0.6 * lb) & (u <= L - 0.6 * lh)
        return np.maximum(np.maximum(base, head), np.where(inside, shaft, 0.0))

    def shaftness(self, u: np.ndarray) -> np.ndarray:
        """1 along the diaphysis, falling smoothly to 0 in the bone ends (0 for ovoid bones)."""
        u = np.asarray(u, dtype=np.float64)
        if self.kind == "ovoid":
            return 0.0 * u
        L = self.length
        ramp = 0.22 * L
        sb = np.clip((u - self.lb) / ramp, 0.0, 1.0)
        sh = np.clip(((L - self.lh) - u) / ramp, 0.0, 1.0)
        sb = sb * sb * (3 - 2 * sb)
        sh = sh * sh * (3 - 2 * sh)
        return np.minimum(sb, sh)

    def cortex(self, u: np.ndarray) -> np.ndarray:
        """Cortical thickness along the axis: thick shaft, thin subchondral ends."""
        u = np.asarray(u, dtype=np.float64)
        cb = self.c_end if self.c_base is None else self.c_base
        ch = self.c_end if self.c_head is None else self.c_head
        end = np.where(u < self.length / 2, cb, ch)
        if self.kind == "ovoid":
            return end + 0 * u
        return end + (self.c_shaft - end) * self.shaftness(u)

    def trabecular(self, u: np.ndarray) -> np.ndarray:
        """Relative density of the medulla: cancellous ends, a marrow cavity in the shaft."""
        return 1.0 - 0.72 * self.shaftness(u)

    def outline(self) -> Ellipse:
        """The ellipse of an ovoid bone (used as the convex member of a joint)."""
        c = self.to_hand(self.length / 2)
        return Ellipse(float(c[0]), float(c[1]), self.length / 2, self.wb, self.angle, self.p)

    def head_ellipse(self) -> Ellipse:
        c = self.to_hand(self.length - self.lh)
        return Ellipse(float(c[0]), float(c[1]), self.lh, self.wh, self.angle)

    def base_ellipse(self) -> Ellipse:
        c = self.to_hand(self.lb)
        return Ellipse(float(c[0]), float(c[1]), self.lb, self.wb, self.angle)

    def edge_point(self, u: float, side: int) -> tuple[float, float]:
        """Local (u, v) of the bone outline at ``u`` on side +1 (v > 0) or -1."""
        return u, side * float(self.width(np.array([u]))[0])


def ellipse_radius(e: Ellipse, direction: float) -> float:
    """Distance from the centre of ``e`` to its boundary along ``direction`` (radians)."""
    d = direction - e.angle
    return 1.0 / math.sqrt((math.cos(d) / e.a) ** 2 + (math.sin(d) / e.b) ** 2)


def unit(angle: float) -> np.ndarray:
    return np.array([math.sin(angle), math.cos(angle)])


# --------------------------------------------------------------------------- soft tissue


@dataclass
class Capsule:
    """A tapered capsule of soft tissue from ``p0`` (radius ``r0``) to ``p1`` (radius ``r1``)."""

    p0: tuple[float, float]
    p1: tuple[float, float]
    r0: float
    r1: float


@dataclass
class SoftTissue:
    """The soft-tissue envelope: finger capsules, palm and forearm polygons, swellings.

    ``half_thickness`` of each part is the radius of the rounded projection of that part
    (fingers ~8-9 mm, palm ~14 mm, wrist ~19 mm).
    """

    capsules: list[Capsule]
    palm: list[tuple[float, float]]
    forearm: list[tuple[float, float]]
    palm_half: float
    forearm_half: float
    swellings: list[Capsule] = field(default_factory=list)  # fusiform swellings at inflamed joints


# --------------------------------------------------------------------------- the hand

#: Adult proportions (mm): L, lb, wb, ws, lh, wh, c_shaft, c_end.
_LONG: dict[str, tuple[float, ...]] = {
    "mc1": (43, 5.5, 7.2, 4.6, 6.0, 6.8, 1.3, 0.6),
    "mc2": (66, 6.0, 6.8, 4.2, 6.4, 6.5, 1.5, 0.6),
    "mc3": (65, 6.0, 6.9, 4.3, 6.4, 6.4, 1.5, 0.6),
    "mc4": (55, 5.0, 5.6, 3.6, 5.8, 5.8, 1.35, 0.6),
    "mc5": (50, 5.0, 6.0, 3.8, 5.6, 5.7, 1.35, 0.6),
    "pp1": (31, 4.5, 7.0, 4.3, 4.2, 5.6, 1.1, 0.5),
    "pp2": (40, 4.5, 7.0, 4.0, 4.0, 5.2, 1.1, 0.5),
    "pp3": (45, 4.8, 7.4, 4.3, 4.2, 5.5, 1.15, 0.5),
    "pp4": (42, 4.5, 7.0, 4.0, 4.0, 5.2, 1.1, 0.5),
    "pp5": (33, 4.0, 6.2, 3.5, 3.6, 4.6, 1.0, 0.5),
    "mp2": (23, 3.5, 5.6, 3.4, 3.2, 4.4, 0.95, 0.45),
    "mp3": (28, 3.8, 5.9, 3.6, 3.4, 4.6, 0.95, 0.45),
    "mp4": (26, 3.6, 5.6, 3.4, 3.2, 4.4, 0.95, 0.45),
    "mp5": (19, 3.2, 4.8, 2.9, 3.0, 3.9, 0.9, 0.45),
    "dp1": (23, 3.6, 6.2, 3.2, 4.2, 4.5, 0.85, 0.45),
    "dp2": (17, 3.0, 4.8, 2.3, 3.4, 3.5, 0.75, 0.4),
    "dp3": (19, 3.2, 5.0, 2.4, 3.6, 3.7, 0.75, 0.4),
    "dp4": (18.5, 3.0, 4.8, 2.3, 3.4, 3.5, 0.75, 0.4),
    "dp5": (16, 2.8, 4.3, 2.1, 3.1, 3.2, 0.75, 0.4),
}

#: Metacarpal bases (x, y) and directions (degrees from +y towards the thumb).
_MC_BASE: dict[int, tuple[float, float, float]] = {
    1: (22.5, -5.0, 35.0),
    2: (11.0, -0.5, 9.0),
    3: (0.0, 0.0, 0.5),
    4: (-10.2, 0.6, -7.5),
    5: (-18.5, -1.2, -17.0),
}

#: Carpal bones as superellipses: centre x, y, direction (deg), length, half-width, exponent.
_CARPAL: dict[str, tuple[float, float, float, float, float, float]] = {
    "capitate": (-0.8, -9.9, 2.0, 22.5, 6.6, 2.3),
    "hamate": (-11.9, -7.8, -12.0, 19.0, 7.0, 2.3),
    "trapezoid": (9.6, -6.0, 12.0, 13.0, 5.5, 2.6),
    "trapezium": (18.8, -9.2, 42.0, 14.0, 6.6, 2.4),
    "scaphoid": (7.4, -19.8, 52.0, 22.5, 6.6, 2.2),
    "lunate": (-7.4, -24.6, -5.0, 14.5, 7.6, 2.5),
    "triquetrum": (-18.0, -18.6, -38.0, 14.0, 6.2, 2.4),
    "pisiform": (-20.6, -15.4, 10.0, 9.5, 4.6, 2.0),
}

#: Normal joint-space widths (mm) of an adult.
JOINT_GAP = {
    "mcp": 1.7,
    "pip": 1.15,
    "dip": 0.9,
    "ip": 1.0,
    "mcp1": 1.5,
    "cmc": 1.1,
    "carpal": 1.2,
    "radcar": 1.8,
    "druj": 1.5,
}

#: Width factor of a narrowed joint space by JSN grade; grade 1 (focal) also loses 0.3 mm.
JSN_FACTOR = (1.0, 0.8, 0.55, 0.28, 0.0)


def narrowed_gap(gap: float, jsn: int) -> float:
    """Joint-space width of a joint of normal width ``gap`` at JSN grade ``jsn`` (0-4)."""
    if jsn <= 0:
        return gap
    if jsn >= 4:
        return 0.0
    if jsn == 1:
        return max(0.25, min(gap * JSN_FACTOR[1], gap - 0.3))
    return max(0.15, gap * JSN_FACTOR[jsn])


@dataclass
class HandShape:
    """Variation of one hand: overall scale, ray lengths, spread and flexion (all from the seed)."""

    scale: float = 1.0
    ray_scale: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0)
    spread: float = 1.0
    spread_jitter: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # degrees
    flexion: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0, 0.0)  # degrees at each finger's joints
    ulnar_deviation: float = 0.0  # degrees, RA deformity at the MCPs
    width_scale: float = 1.0
    soft_scale: float = 1.0  # soft-tissue thickness factor (body habitus)


@dataclass
class Joint:
    """A joint between two bones, in the hand frame: ``center`` is the middle of the
    joint space (the landmark), ``prox``/``dist`` name the bones, ``gap`` the normal width."""

    name: str
    prox: str
    dist: str
    center: np.ndarray
    gap: float
    cutters: list[tuple[str, int]] = field(default_factory=list)  # (bone, index) making its space
    dist_u: float = -1.0  # finger joints: u of the articular surface in the distal bone's frame
    soft_radius: float = 8.0  # finger joints: radius of the finger's soft tissue there


@dataclass
class Hand:
    """A complete phantom hand in the hand frame (mm)."""

    bones: dict[str, Bone]
    soft: SoftTissue
    landmarks: dict[str, np.ndarray]
    tips: list[np.ndarray]
    joints: dict[str, Joint]
    ring_finger: int | None = None
    ring_at: float = 0.0
    extras: list[Bone] = field(default_factory=list)


def _long_bone(
    name: str, x: float, y: float, angle: float, s: float, ws: float, length_factor: float = 1.0
) -> Bone:
    L, lb, wb, wsh, lh, wh, cs, ce = _LONG[name]
    f = length_factor
    return Bone(
        name,
        x,
        y,
        angle,
        L * s * f,
        "long",
        wb=wb * s * ws,
        ws=wsh * s * ws,
        wh=wh * s * ws,
        lb=lb * s * f,
        lh=lh * s * min(1.0, 0.35 + 0.65 * f),
        c_shaft=cs * s,
        c_end=ce * s,
    )


#: Finger spread at the MCP by ray, degrees (scaled by ``HandShape.spread``).
_SPREAD_DEG = {1: 0.0, 2: 6.0, 3: 1.0, 4: -5.0, 5: -11.0}
#: Joints whose centres are landmarks (with the bone landmarks of :func:`_landmarks`).
_JOINT_LANDMARKS = (
    "ip1",
    "mcp1",
    "mcp2",
    "mcp3",
    "mcp4",
    "mcp5",
    "pip2",
    "pip3",
    "pip4",
    "pip5",
    "cmc3",
    "cmc4",
    "cmc5",
    "stt",
    "capnlun",
    "radcar",
)


def build_hand(shape: HandShape, maturity: float | None = None) -> Hand:
    """Lay out the bones, joints, soft tissue and landmarks of one healthy adult hand.

    Damage (:mod:`svdh.synth.damage`) and growth (child mode) modify the result in place.
    """
    s = shape.scale
    ws = shape.width_scale
    bones: dict[str, Bone] = _carpus(s, ws)
    bones["radius"], bones["ulna"] = _forearm(s, ws)
    joints: dict[str, Joint] = {}
    tips: list[np.ndarray] = []
    capsules: list[Capsule] = []
    for d in range(1, 6):
        tip, finger = _ray(d, shape, bones, joints)
        tips.append(tip)
        capsules.extend(finger)
    _add_sesamoids(bones, s)
    _add_carpal_joints(bones, joints, s)
    landmarks = _landmarks(bones, joints, s)
    soft = SoftTissue(
        capsules,
        _palm_outline(bones, joints, s),
        [
            (-31.0 * s, -62.0 * s),
            (27.0 * s, -62.0 * s),
            (30.0 * s, -200.0 * s),
            (-34.0 * s, -200.0 * s),
        ],
        palm_half=14.0 * s * shape.soft_scale,
        forearm_half=20.0 * s * shape.soft_scale,
    )
    hand = Hand(bones, soft, landmarks, tips, joints)
    if maturity is not None:
        grow(hand, maturity, s)
    return hand


def _carpus(s: float, ws: float) -> dict[str, Bone]:
    """The carpal bones (table :data:`_CARPAL`) and the hamate hook."""
    bones: dict[str, Bone] = {}
    for name, (cx, cy, ang, L, hw, pe) in _CARPAL.items():
        a = math.radians(ang)
        c = np.array([cx, cy]) * s
        g = 1.06  # the carpus is tightly packed: bones a little larger than the table, then cut
        o = c - unit(a) * L * g * s / 2
        bones[name] = Bone(
            name,
            float(o[0]),
            float(o[1]),
            a,
            L * g * s,
            "ovoid",
            p=pe,
            wb=hw * g * s * ws,
            c_end=0.42 * s,
            density=0.75 if name == "pisiform" else 1.12,
        )
    # hamate hook: seen end-on as a cortical ring inside the hamate
    hook_c = np.array([-13.2, -5.2]) * s
    bones["hamate_hook"] = Bone(
        "hamate_hook",
        float(hook_c[0]),
        float(hook_c[1] - 3.0 * s),
        0.2,
        6.0 * s,
        "ovoid",
        wb=2.8 * s,
        c_end=0.8 * s,
        density=0.25,
    )
    return bones


def _forearm(s: float, ws: float) -> tuple[Bone, Bone]:
    """Radius and ulna, from below the field up to the wrist."""
    rad = Bone(
        "radius",
        4.5 * s,
        -150.0 * s,
        math.radians(-1.0),
        124.0 * s,
        "long",
        wb=9.0 * s,
        ws=9.8 * s * ws,
        wh=16.5 * s * ws,
        lb=20 * s,
        lh=4.0 * s,
        c_shaft=2.4 * s,
        c_end=0.7 * s,
        flare=28.0 * s,
    )
    # radial inclination: the articular surface slopes ~22 degrees, the styloid the highest point
    incl = math.radians(22.0)
    tip = rad.to_hand(rad.length - 4.0 * s, 0.0)
    nrm = np.array([-math.sin(incl), math.cos(incl)])  # removes the side it points to
    rad.cutters.append(
        Cutter(
            gap=0.0,
            plate=rad.c_end,
            plane=(float(tip[0]), float(tip[1] + 1.0 * s), float(nrm[0]), float(nrm[1])),
        )
    )
    uln = Bone(
        "ulna",
        -19.5 * s,
        -150.0 * s,
        math.radians(1.0),
        118.0 * s,
        "long",
        wb=6.0 * s,
        ws=5.6 * s * ws,
        wh=7.8 * s * ws,
        lb=15 * s,
        lh=5.5 * s,
        c_shaft=2.0 * s,
        c_end=0.6 * s,
        flare=14.0 * s,
    )
    uln.lobes.append(Lobe(uln.length - 1.5 * s, -5.2 * s * ws, 4.2 * s, 2.2 * s))
    return rad, uln


def _ray(
    d: int, shape: HandShape, bones: dict[str, Bone], joints: dict[str, Joint]
) -> tuple[np.ndarray, list[Capsule]]:
    """Ray ``d`` (1 = thumb): its metacarpal, phalanges and joints go into ``bones`` and
    ``joints``; returns the finger tip and the finger's soft-tissue capsules."""
    s, ws = shape.scale, shape.width_scale
    bx, by, bang = _MC_BASE[d]
    rs = shape.ray_scale[d - 1]
    mc = _long_bone(f"mc{d}", bx * s, by * s, math.radians(bang), s * rs, ws)
    bones[mc.name] = mc
    # finger direction at the MCP: spread, jitter, ulnar deviation (fingers 2-5)
    dev = 0.0 if d == 1 else -shape.ulnar_deviation * (0.6 + 0.1 * d)
    ang = math.radians(bang + _SPREAD_DEG[d] * shape.spread + shape.spread_jitter[d - 1] + dev)
    flex = math.radians(shape.flexion[d - 1])
    if d == 1:
        ang = math.radians(bang - 9.0 + shape.spread_jitter[0])
        chain = ["pp1", "dp1"]
        jnames = ["mcp1", "ip1"]
        gaps = [JOINT_GAP["mcp1"], JOINT_GAP["ip"]]
    else:
        chain = [f"pp{d}", f"mp{d}", f"dp{d}"]
        jnames = [f"mcp{d}", f"pip{d}", f"dip{d}"]
        gaps = [JOINT_GAP["mcp"], JOINT_GAP["pip"], JOINT_GAP["dip"]]
    prox = mc
    cum_flex = 0.0
    for i, (bname, jname, gap) in enumerate(zip(chain, jnames, gaps, strict=True)):
        cum_flex += flex * (0.6 if i == 0 else 1.0)
        fore = math.cos(min(cum_flex, math.radians(45)))
        head = prox.head_ellipse()
        hc = np.array([head.cx, head.cy])
        r_head = ellipse_radius(head, ang)
        # the concave base starts a little behind the head tip (its lips)
        _, lbn, *_ = _LONG[bname]
        lip = 0.35 * lbn * s
        origin = hc + unit(ang) * (r_head - lip)
        b = _long_bone(bname, float(origin[0]), float(origin[1]), ang, s * rs, ws, fore)
        b.cutters.append(Cutter(gap=gap * s, plate=b.c_end, ellipse=head, source=prox.name))
        bones[bname] = b
        joints[jname] = Joint(
            jname,
            prox.name,
            bname,
            hc + unit(ang) * (r_head + gap * s / 2),
            gap * s,
            cutters=[(bname, 0)],
            dist_u=lip + gap * s,
        )
        prox = b
        # distal joints drift back towards the ray's line; DIPs bend a little more
        ang += math.radians(-0.25 * (math.degrees(ang) - bang) * 0.3)
    tip = prox.to_hand(prox.length + 0.5 * s)
    return tip, _finger_soft_tissue(d, prox, jnames, joints, s)


def _finger_soft_tissue(
    d: int, last: Bone, jnames: list[str], joints: dict[str, Joint], s: float
) -> list[Capsule]:
    """Capsules of finger ``d``'s soft tissue, from the MCP to beyond the tip of ``last``
    (the distal phalanx); sets each joint's ``soft_radius``."""
    pts = (
        [joints[jnames[0]].center]
        + [joints[j].center for j in jnames[1:]]
        + [last.to_hand(last.length + 3.0 * s)]
    )
    if d == 1:
        radii = [10.5, 9.0, 8.2]
    else:
        radii = [8.8, 8.0, 7.4, 6.6] if d != 5 else [8.0, 7.3, 6.7, 6.0]
    capsules = [
        Capsule(tuple(p0), tuple(p1), r0 * s, r1 * s)
        for p0, p1, r0, r1 in zip(pts[:-1], pts[1:], radii[:-1], radii[1:], strict=True)
    ]
    for jn, r in zip(jnames, radii, strict=False):
        joints[jn].soft_radius = r * s
    return capsules


def _add_sesamoids(bones: dict[str, Bone], s: float) -> None:
    """Thumb sesamoids on the palmar side of the first metacarpal head."""
    mc1 = bones["mc1"]
    for k, v in enumerate((-0.45, 0.45)):
        c = mc1.to_hand(mc1.length - 1.8 * mc1.lh, v * mc1.wh)
        bones[f"sesamoid{k}"] = Bone(
            f"sesamoid{k}",
            float(c[0]),
            float(c[1] - 2.6 * s),
            0.0,
            5.2 * s,
            "ovoid",
            wb=2.4 * s,
            c_end=0.45 * s,
            density=0.8,
        )


def _add_carpal_joints(bones: dict[str, Bone], joints: dict[str, Joint], s: float) -> None:
    """The scored wrist joints and the cuts that make every carpal joint space (the concave
    member is cut by the convex one)."""
    _add_wrist_joints(bones, joints, s)
    g = JOINT_GAP

    def cut(bone: str, by: str, gap: float, joint: str | None = None) -> None:
        other = bones[by]
        e = other.outline() if other.kind == "ovoid" else other.head_ellipse()
        b = bones[bone]
        # intercarpal spaces are partly bridged in projection by the bones' curved surfaces
        residual = 0.3 if b.kind == "ovoid" and other.kind == "ovoid" else 0.0
        b.cutters.append(
            Cutter(gap=gap * s, plate=b.c_end, ellipse=e, source=by, residual=residual)
        )
        if joint is not None:
            joints[joint].cutters.append((bone, len(b.cutters) - 1))

    cut("mc3", "capitate", g["cmc"], "cmc3")
    cut("mc4", "hamate", g["cmc"], "cmc4")
    cut("mc5", "hamate", g["cmc"], "cmc5")
    cut("mc2", "trapezoid", g["cmc"])
    cut("mc1", "trapezium", g["cmc"])
    cut("trapezium", "scaphoid", g["carpal"], "stt")
    cut("trapezoid", "scaphoid", g["carpal"], "stt")
    cut("scaphoid", "capitate", g["carpal"], "capnlun")
    cut("lunate", "capitate", g["carpal"], "capnlun")
    cut("hamate", "capitate", g["carpal"])
    cut("trapezoid", "capitate", g["carpal"])
    cut("triquetrum", "hamate", g["carpal"])
    cut("triquetrum", "lunate", g["carpal"])
    cut("lunate", "scaphoid", g["carpal"])
    cut("radius", "scaphoid", g["radcar"], "radcar")
    cut("radius", "lunate", g["radcar"], "radcar")
    rad, uh = bones["radius"], bones["ulna"].head_ellipse()
    rad.cutters.append(Cutter(gap=g["druj"] * s, plate=rad.c_end, ellipse=uh, source="ulna"))


def _add_wrist_joints(bones: dict[str, Bone], joints: dict[str, Joint], s: float) -> None:
    """Scored wrist joints: the landmark in the joint space, between the two members."""
    g = JOINT_GAP
    cap, lun, sca = bones["capitate"], bones["lunate"], bones["scaphoid"]
    trm, trd, ham = bones["trapezium"], bones["trapezoid"], bones["hamate"]
    for d, carp in ((3, cap), (4, ham), (5, ham)):
        mcd = bones[f"mc{d}"]
        base = mcd.to_hand(0.0)
        e = carp.outline()
        ec = np.array([e.cx, e.cy])
        # the point of the carpal outline under the metacarpal base, then half the gap beyond
        dirn = math.atan2(base[0] - ec[0], base[1] - ec[1]) if d != 3 else mcd.angle
        surf = ec + unit(dirn) * ellipse_radius(e, dirn)
        joints[f"cmc{d}"] = Joint(
            f"cmc{d}", carp.name, mcd.name, surf + unit(dirn) * g["cmc"] * s / 2, g["cmc"] * s
        )
    se = sca.outline()
    toward = (
        math.atan2(trm.outline().cx - se.cx, trm.outline().cy - se.cy) * 0.5
        + math.atan2(trd.outline().cx - se.cx, trd.outline().cy - se.cy) * 0.5
    )
    joints["stt"] = Joint(
        "stt",
        "scaphoid",
        "trapezium",
        np.array([se.cx, se.cy])
        + unit(toward) * (ellipse_radius(se, toward) + g["carpal"] * s / 2),
        g["carpal"] * s,
    )
    ce = cap.outline()
    down = cap.angle + math.pi
    joints["capnlun"] = Joint(
        "capnlun",
        "capitate",
        "lunate",
        np.array([ce.cx, ce.cy]) + unit(down) * (ellipse_radius(ce, down) + g["carpal"] * s / 2),
        g["carpal"] * s,
    )
    le = lun.outline()
    joints["radcar"] = Joint(
        "radcar",
        "lunate",
        "radius",
        np.array([le.cx, le.cy])
        + unit(math.pi) * (ellipse_radius(le, math.pi) + g["radcar"] * s / 2),
        g["radcar"] * s,
    )


def _landmarks(bones: dict[str, Bone], joints: dict[str, Joint], s: float) -> dict[str, np.ndarray]:
    """Joint centres and bone landmarks of the hand."""
    landmarks: dict[str, np.ndarray] = {name: joints[name].center for name in _JOINT_LANDMARKS}
    mc1, trm, sca = bones["mc1"], bones["trapezium"], bones["scaphoid"]
    lun, rad, uln = bones["lunate"], bones["radius"], bones["ulna"]
    landmarks["mc1base"] = mc1.to_hand(mc1.lb)
    landmarks["trapezium"] = trm.to_hand(trm.length / 2)
    landmarks["scaphoid"] = sca.to_hand(sca.length / 2)
    landmarks["lunate"] = lun.to_hand(lun.length / 2)
    landmarks["radius"] = rad.to_hand(rad.length - 7.0 * s, 3.0 * s)
    landmarks["ulna"] = uln.to_hand(uln.length - 4.0 * s, -1.0 * s)
    return landmarks


def _palm_outline(
    bones: dict[str, Bone], joints: dict[str, Joint], s: float
) -> list[tuple[float, float]]:
    """The palm's soft-tissue outline (mm), around the MCPs, the webs and the thenar."""

    def P(x: float, y: float) -> tuple[float, float]:
        return (x * s, y * s)

    mcp = {d: joints[f"mcp{d}"].center / s for d in range(1, 6)}
    pp = {d: bones[f"pp{d}"] for d in range(1, 6)}
    web = {d: pp[d].to_hand(0.36 * pp[d].length) / s for d in range(2, 6)}
    thumb_mid = pp[1].to_hand(0.15 * pp[1].length) / s
    return [
        P(-31.0, -62.0),  # ulnar wrist
        P(-32.0, -34.0),
        P(-35.0, -8.0),  # hypothenar
        P(mcp[5][0] - 9.5, mcp[5][1] - 14.0),
        P(mcp[5][0] - 7.5, mcp[5][1] + 2.0),
        P(web[5][0] - 3.0, web[5][1]),
        P((web[5][0] + web[4][0]) / 2, (web[5][1] + web[4][1]) / 2 - 2.0),
        P(web[4][0], web[4][1]),
        P((web[4][0] + web[3][0]) / 2, (web[4][1] + web[3][1]) / 2 - 1.0),
        P(web[3][0], web[3][1]),
        P((web[3][0] + web[2][0]) / 2, (web[3][1] + web[2][1]) / 2 - 2.0),
        P(web[2][0] + 2.0, web[2][1]),
        P(mcp[2][0] + 8.5, mcp[2][1] - 2.0),
        P(mcp[2][0] + 9.5, mcp[2][1] - 18.0),  # first web space
        P(thumb_mid[0] - 4.0, thumb_mid[1] - 3.0),
        P(thumb_mid[0] + 6.0, thumb_mid[1] - 12.0),
        P(38.0, -14.0),  # thenar
        P(30.0, -40.0),
        P(27.0, -62.0),  # radial wrist
    ]


# --------------------------------------------------------------------------- growth (child mode)

#: Carpal ossification: onset and years to full size, in male-equivalent years of maturity.
CARPAL_OSSIFICATION: dict[str, tuple[float, float]] = {
    "capitate": (0.15, 9.0),
    "hamate": (0.3, 9.0),
    "triquetrum": (2.5, 9.0),
    "lunate": (4.0, 9.0),
    "trapezium": (5.5, 8.0),
    "trapezoid": (6.0, 8.0),
    "scaphoid": (6.0, 8.0),
    "pisiform": (11.0, 4.0),
    "hamate_hook": (11.5, 3.0),
    "sesamoid0": (13.0, 2.5),
    "sesamoid1": (13.0, 2.5),
}
#: Epiphyses: bone -> (end, onset, years to full width, fusion), male-equivalent years.
EPIPHYSES: dict[str, tuple[str, float, float, float]] = {
    "radius": ("head", 1.0, 11.0, 17.5),
    "ulna": ("head", 6.5, 8.5, 17.0),
    "mc1": ("base", 2.5, 9.5, 15.5),
    **{f"mc{d}": ("head", 2.0, 10.0, 16.0) for d in range(2, 6)},
    **{f"pp{d}": ("base", 1.8, 10.0, 15.5) for d in range(1, 6)},
    **{f"mp{d}": ("base", 2.5, 9.5, 15.0) for d in range(2, 6)},
    **{f"dp{d}": ("base", 2.3, 9.5, 14.5) for d in range(1, 6)},
}


def _growth(m: float, onset: float, duration: float) -> float:
    return float(np.clip((m - onset) / duration, 0.0, 1.0)) if m >= onset else -1.0


def grow(hand: Hand, maturity: float, s: float) -> None:
    """Turn an adult hand into a growing one at skeletal ``maturity`` (male-equivalent years).

    Carpal bones ossify in their known order and grow from small round centres to their
    adult shape; epiphyses appear as separate ossification centres beside a flat metaphysis,
    separated by a lucent growth plate that narrows and finally fuses; unossified cartilage
    widens every joint space. A hand at maturity >= ~18 is the adult hand.
    """
    m = float(maturity)
    bones = hand.bones
    cartilage = 2.2 * s * float(np.clip(1.0 - m / 16.0, 0.0, 1.0)) ** 1.3
    for j in hand.joints.values():
        j.cutters = []  # children carry no damage: the joint registry is not needed
    _grow_carpals(bones, m)
    for name, (end, onset, dur, fusion) in EPIPHYSES.items():
        b = bones.get(name)
        if b is None or m >= fusion:
            continue
        epi = _epiphysis(b, name, end, _growth(m, onset, dur), m > fusion - 1.2, s)
        if epi is not None:
            bones[epi.name] = epi
    _recut_joints(bones, cartilage)
    for b in bones.values():
        b.c_shaft *= 0.55 + 0.45 * min(m / 15.0, 1.0)


def _grow_carpals(bones: dict[str, Bone], m: float) -> None:
    """Carpal centres: absent before their onset, then growing from small round centres."""
    for name, (onset, dur) in CARPAL_OSSIFICATION.items():
        b = bones.get(name)
        if b is None:
            continue
        g = _growth(m, onset, dur)
        if g < 0:
            del bones[name]
            continue
        c = b.to_hand(b.length / 2)
        f = 0.18 + 0.82 * g**0.85
        hw = b.wb * f
        length = (
            max(2 * hw, (2 * b.wb + (b.length - 2 * b.wb) * g) * f)
            if b.length > 2 * b.wb
            else b.length * f
        )
        b.wb, b.length, b.p = hw, length, 2.0 + (b.p - 2.0) * g
        b.x, b.y = (c - b.e_u * length / 2).tolist()
        b.c_end *= 0.6 + 0.4 * g


def _epiphysis(b: Bone, name: str, end: str, g: float, fusing: bool, s: float) -> Bone | None:
    """Cut the growth plate at ``end`` of long bone ``b`` and return its epiphysis (None
    before the epiphysis ossifies, ``g`` < 0); the articular cutters of that end move to it."""
    physis = (0.25 if fusing else 0.5 + 1.6 * (1.0 - max(g, 0.0))) * s
    if end == "base":
        slot = b.lb * 1.05
        u_p = slot
        normal = -b.e_u
    else:
        slot = b.lh * 1.5 if name.startswith("mc") else (9.0 * s)
        u_p = b.length - slot
        normal = b.e_u
    p0 = b.to_hand(u_p)
    b.cutters.append(
        Cutter(
            gap=physis / 2,
            plate=0.45 * s,
            plane=(float(p0[0]), float(p0[1]), float(normal[0]), float(normal[1])),
        )
    )
    # articular cutters at this end (and the radius's inclination plane) go with the epiphysis
    moved = [
        c
        for c in b.cutters
        if c.ellipse is not None
        and c.source
        and (end == "base")
        == (b.to_local(np.array([c.ellipse.cx, c.ellipse.cy]))[0] < b.length / 2)
    ]
    if name == "radius":
        moved += [c for c in b.cutters if c.plane is not None and c.gap == 0.0]
    b.cutters = [c for c in b.cutters if c not in moved]
    if g < 0:
        return None
    wend = b.wb if end == "base" else b.wh
    hw = wend * (0.22 + 0.74 * g**0.8)
    le = slot * (0.3 + 0.55 * g**0.8)
    uc = u_p - physis / 2 - le / 2 if end == "base" else u_p + physis / 2 + le / 2
    c = b.to_hand(uc)
    epi = Bone(
        f"{name}_epi",
        *(c - b.e_u * le / 2).tolist(),
        b.angle,
        le,
        "ovoid",
        p=2.0 + 0.8 * g,
        wb=hw,
        c_end=0.35 * s,
    )
    epi.cutters = moved
    return epi


def _recut_joints(bones: dict[str, Bone], cartilage: float) -> None:
    """Point each joint cutter at its convex member as it now is (a metacarpal's epiphysis, a
    shrunken carpal outline; dropped where that member has not ossified yet) and widen the
    joint space by the unossified ``cartilage``."""
    for b in list(bones.values()):
        kept = []
        for c in b.cutters:
            if c.source:
                src = (
                    bones.get(f"{c.source}_epi")
                    if c.source.startswith("mc") and f"{c.source}_epi" in bones
                    else bones.get(c.source)
                )
                if src is None:
                    continue
                if src.kind == "ovoid":
                    c.ellipse = src.outline()
                c.gap += cartilage
            kept.append(c)
        b.cutters = kept

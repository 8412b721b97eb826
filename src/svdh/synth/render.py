"""Render phantom hands as X-ray projections (vectorised numpy + OpenCV warps).

Speed comes from drawing every bone in its own axis-aligned frame: rows run along the bone
axis, so the half-width profile, the cortical thickness and the osteopenia are 1-D vectors and
the projected chord ``2 sqrt(W(u)^2 - v^2)`` is one broadcast over a small patch. Each patch is
drawn supersampled (``ss`` x the output pixel pitch), box-filtered down to the output pitch
(anti-aliasing: a 1.5 mm joint space is still seen at 128 px as a partial-volume dip) and then
placed into the image with one affine warp (rotation, mirror, scale, position). Soft tissue is
a distance-transform profile of the hand outline at output resolution. Hand-written because no
maintained library renders parametric radiographs; OpenCV supplies the fast, deterministic
warps, resizes and drawing primitives.

Intensities follow the physics loosely: attenuation line integrals add up
(``A = mu_soft t_soft + mu_cortex t_cortex + mu_trabecular t_trabecular + metal``), the
display value is ``1 - exp(-A)`` (bright = dense, MONOCHROME2) mapped through the exposure,
contrast and gamma of the film, then blur, heel effect and quantum noise whose variance grows
with the density (fewer photons behind bone).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from svdh.synth.anatomy import Bone, Cutter, Ellipse, Hand

#: Linear attenuation per mm of projected thickness (display units, tuned by eye against
#: the RA2-DREAM and RSNA samples).
MU_SOFT = 0.0125
MU_CORTEX = 0.15
MU_TRABECULAR = 0.05
#: Contrast of the trabecular texture (relative density modulation).
TEX_AMP = 0.36
MU_METAL = 0.45


def supersampling(size: int) -> tuple[int, int]:
    """Supersampling of bone patches along and across the bone axis.

    Along the axis at least 2x and ~640 px equivalent at small sizes: joint spaces run across
    the bone, so they need it most. Across the axis half of that: the outlines along a bone are
    smooth chord profiles that the warp into the image interpolates anyway.
    """
    along = int(min(8, max(2, math.ceil(640 / max(size, 1)))))
    return along, max(1, along // 2)


# --------------------------------------------------------------------------- texture


@lru_cache(maxsize=6)
def trabecular_tile(
    px_per_mm: float, px_per_mm_across: float | None = None, n: int = 1024
) -> np.ndarray:
    """A fixed band-pass noise tile that looks like trabecular bone at ``px_per_mm`` along the
    rows (the bone axis) and ``px_per_mm_across`` (default the same) along the columns.

    The pass band is stretched so the pattern runs along the bone, as trabeculae follow the
    load lines. Seeded by a constant: identical in every process.
    """
    across = px_per_mm if px_per_mm_across is None else px_per_mm_across
    rng = np.random.default_rng(0x5FD4)
    white = rng.standard_normal((n, n))
    spec = np.fft.rfft2(white)
    fy = np.fft.fftfreq(n)[:, None] * px_per_mm  # cycles per mm along the axis
    fx = np.fft.rfftfreq(n)[None, :] * across
    fr = np.sqrt((1.9 * fy) ** 2 + fx**2)
    f0 = 0.8  # trabecular spacing ~1.2 mm
    band = np.exp(-0.5 * ((fr - f0) / 0.35) ** 2) + 0.25 * np.exp(-0.5 * (fr / 0.15) ** 2)
    tex = np.fft.irfft2(spec * band, s=(n, n))
    tex /= tex.std() + 1e-12
    # ridges of band-pass noise (its zero crossings) form a network of thin plates and rods
    # around marrow spaces, as trabecular bone looks on a radiograph
    tex = np.exp(-((tex / 0.55) ** 2))
    tex = (tex - tex.mean()) / (tex.std() + 1e-12)
    return (1.0 + TEX_AMP * tex).astype(np.float32)  # a density modulation around 1


def _texture(tile: np.ndarray, rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    n = tile.shape[0]
    oy = int(rng.integers(0, max(1, n - rows + 1)))
    ox = int(rng.integers(0, max(1, n - cols + 1)))
    if rows + oy <= n and cols + ox <= n:
        return tile[oy : oy + rows, ox : ox + cols]
    iy = (oy + np.arange(rows)) % n
    ix = (ox + np.arange(cols)) % n
    return tile[np.ix_(iy, ix)]


# --------------------------------------------------------------------------- placement


@dataclass
class Placement:
    """Affine map from the hand frame (mm) to image pixels (x right, y down; pixel centres
    at integers): ``p_img = G @ p_hand + t``."""

    G: np.ndarray
    t: np.ndarray
    k: float = 0.0  # pixels per mm (computed from G when 0)

    def __post_init__(self) -> None:
        if not self.k:
            self.k = float(
                math.sqrt(abs(self.G[0, 0] * self.G[1, 1] - self.G[0, 1] * self.G[1, 0]))
            )

    @classmethod
    def make(
        cls,
        side: str,
        px_per_mm: float,
        rotation_deg: float,
        center_px: tuple[float, float],
        center_mm: tuple[float, float] = (0.0, 0.0),
    ) -> Placement:
        m = 1.0 if side == "L" else -1.0  # a left hand shows its thumb on the image's right
        a = math.radians(rotation_deg)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        G = px_per_mm * rot @ np.array([[m, 0.0], [0.0, -1.0]])
        t = np.asarray(center_px, dtype=float) - G @ np.asarray(center_mm, dtype=float)
        return cls(G, t)

    @property
    def px_per_mm(self) -> float:
        return self.k

    def apply(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, dtype=float) @ self.G.T + self.t


# --------------------------------------------------------------------------- bones


def _ramp(x: np.ndarray) -> np.ndarray:
    """Anti-aliased step: 0 below -0.5, 1 above +0.5 (x in supersampled pixels)."""
    return np.clip(x + 0.5, 0.0, 1.0)


def _local_ellipse_sdf(e: Ellipse, bone: Bone, uu: np.ndarray, vv: np.ndarray) -> np.ndarray:
    """Approximate signed distance (mm) to ellipse ``e``, at bone-local points (uu, vv)."""
    cu, cv = bone.to_local(np.array([e.cx, e.cy]))
    phi = e.angle - bone.angle
    c, s = math.cos(phi), math.sin(phi)
    du, dv = uu - cu, vv - cv
    xa = du * c + dv * s
    xb = -du * s + dv * c
    if e.p == 2.0:
        k0 = np.sqrt((xa / e.a) ** 2 + (xb / e.b) ** 2)
        k1 = np.sqrt((xa / (e.a * e.a)) ** 2 + (xb / (e.b * e.b)) ** 2) + 1e-9
        return k0 * (k0 - 1.0) / k1
    # superellipse: first-order distance (F - 1) / |grad F|
    p = e.p
    ax, bx = np.abs(xa) / e.a, np.abs(xb) / e.b
    F = (ax**p + bx**p) ** (1.0 / p) + 1e-9
    g = F ** (1.0 - p) * np.sqrt((ax ** (p - 1) / e.a) ** 2 + (bx ** (p - 1) / e.b) ** 2) + 1e-9
    return (F - 1.0) / g


def _window(lo: float, hi: float, start: float, step: float, n: int) -> slice:
    i0 = max(0, int(math.floor((lo - start) / step)))
    i1 = min(n, int(math.ceil((hi - start) / step)) + 1)
    return slice(i0, max(i0, i1))


@dataclass
class _Grid:
    """The supersampled sample grid of a bone patch in the bone's frame (mm).

    Output pixel ``(i, j)`` sits at ``u = u0 + i / k``, ``v = v0 + j / k``; ``u``/``v`` are the
    supersampled sample positions, ``h``/``hv`` their pitch along and across the axis."""

    u0: float
    v0: float
    nu: int
    nv: int
    u: np.ndarray
    v: np.ndarray
    h: float
    hv: float


def _patch_grid(bone: Bone, k: float, ss: int, sv: int, margin_mm: float) -> _Grid:
    """The grid covering ``bone`` (its lobes included) plus a margin."""
    L = bone.length
    wmax = float(bone.width(np.linspace(0.0, L, 64)).max())
    u_lo, u_hi, v_hi = 0.0, L, wmax
    for lobe in bone.lobes:
        u_lo = min(u_lo, lobe.u - lobe.a)
        u_hi = max(u_hi, lobe.u + lobe.a)
        v_hi = max(v_hi, abs(lobe.v) + lobe.b)
    m = margin_mm + 1.5 / k
    u0 = u_lo - m
    v0 = -v_hi - m
    nu = int(math.ceil((u_hi + m - u0) * k)) + 1
    nv = int(math.ceil((-2 * v0) * k)) + 1
    h = 1.0 / (k * ss)  # supersampled pitch along the axis, mm
    hv = 1.0 / (k * sv)  # and across it
    # supersampled sample i sits at output-pixel coordinate (i + 0.5) / ss - 0.5
    u = (u0 + ((np.arange(nu * ss) + 0.5) / ss - 0.5) / k).astype(np.float64)
    v = (v0 + ((np.arange(nv * sv) + 0.5) / sv - 0.5) / k).astype(np.float64)
    return _Grid(u0, v0, nu, nv, u, v, h, hv)


def _half_chords(bone: Bone, g: _Grid) -> tuple[np.ndarray, np.ndarray, slice]:
    """Half-chords through the whole bone (``outer``) and through its medulla (``inner``,
    only the columns ``ci`` where the medulla can be); lobes add to ``outer``."""
    u, v = g.u, g.v
    W = bone.width(u)
    c = bone.cortex(u)
    # inner (medullary) profile: the outline offset inwards by the cortical thickness (the
    # minimum over a disc of radius c; W between samples by linear interpolation)
    Wi = W - c
    for t in (-1.0, -0.75, -0.5, -0.25, 0.25, 0.5, 0.75, 1.0):
        Wi = np.minimum(
            Wi, np.interp(u + c * t, u, W, left=0.0, right=0.0) - c * math.sqrt(1.0 - t * t)
        )
    Wi = np.clip(Wi, 0.0, None)
    v2 = (v * v).astype(np.float32)
    # half-chords (the factor 2 of the chord is folded into the attenuation factors below)
    outer = np.subtract.outer((W * W).astype(np.float32), v2)
    np.maximum(outer, 0.0, out=outer)
    np.sqrt(outer, out=outer)
    # the medulla only spans the columns |v| < max Wi
    wi_max = float(Wi.max())
    ci = _window(-wi_max, wi_max, v[0], g.hv, v.size)
    inner = np.subtract.outer((Wi * Wi).astype(np.float32), v2[ci])
    np.maximum(inner, 0.0, out=inner)
    np.sqrt(inner, out=inner)

    for lobe in bone.lobes:
        rs = _window(lobe.u - lobe.a, lobe.u + lobe.a, u[0], g.h, u.size)
        cs = _window(lobe.v - lobe.b, lobe.v + lobe.b, v[0], g.hv, v.size)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            continue
        du = ((u[rs] - lobe.u) / lobe.a)[:, None] ** 2
        dv = ((v[cs] - lobe.v) / lobe.b)[None, :] ** 2
        # a process (styloid) is mostly cortical bone: all of its chord counts as cortex
        o = (lobe.b * np.sqrt(np.clip(1.0 - du - dv, 0.0, None))).astype(np.float32)
        np.maximum(outer[rs, cs], o, out=outer[rs, cs])
    return outer, inner, ci


def _on_inner(cs: slice, ci: slice) -> slice:
    """The columns ``cs`` of ``outer`` as columns of ``inner`` (which starts at ``ci``)."""
    c0 = ci.start
    return slice(
        max(cs.start, ci.start) - c0, max(min(cs.stop, ci.stop), max(cs.start, ci.start)) - c0
    )


def _cut_sdf(bone: Bone, cut: Cutter, g: _Grid) -> tuple[slice, slice, np.ndarray] | None:
    """Signed distance (mm) to a cutter's surface over the window it can touch (None where the
    window is empty): a neighbour's ellipse, or a plane."""
    u, v, h = g.u, g.v, g.h
    if cut.ellipse is not None:
        e = cut.ellipse
        cu, cv = bone.to_local(np.array([e.cx, e.cy]))
        phi = e.angle - bone.angle
        ext_u = math.hypot(e.a * math.cos(phi), e.b * math.sin(phi)) + cut.gap + cut.plate + 2 * h
        ext_v = math.hypot(e.a * math.sin(phi), e.b * math.cos(phi)) + cut.gap + cut.plate + 2 * h
        rs = _window(cu - ext_u, cu + ext_u, u[0], h, u.size)
        cs = _window(cv - ext_v, cv + ext_v, v[0], g.hv, v.size)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            return None
        return rs, cs, _local_ellipse_sdf(e, bone, u[rs, None], v[None, cs])
    px, py, nx, ny = cut.plane  # type: ignore[misc]
    pu, pv = bone.to_local(np.array([px, py]))
    nu_, nv_ = float(np.array([nx, ny]) @ bone.e_u), float(np.array([nx, ny]) @ bone.e_v)
    rs, cs = slice(0, u.size), slice(0, v.size)
    return rs, cs, -((u[:, None] - pu) * nu_ + (v[None, :] - pv) * nv_)


def _apply_cutters(bone: Bone, g: _Grid, outer: np.ndarray, inner: np.ndarray, ci: slice) -> None:
    """Remove what the joint spaces (cutters) take from ``outer`` and ``inner``, in place;
    a subchondral plate is left along each cut."""
    h, c0 = g.h, ci.start
    for cut in bone.cutters:
        found = _cut_sdf(bone, cut, g)
        if found is None:
            continue
        rs, cs, sdf = found
        keep = _ramp((sdf - cut.gap) / h).astype(np.float32)
        if cut.residual > 0:
            # only the joint space keeps some bone; the neighbour's own body is always removed
            gapzone = np.clip((sdf + 2 * h) / (2 * h), 0.0, 1.0).astype(np.float32)
            keep = np.maximum(keep, np.float32(cut.residual) * gapzone)
        outer[rs, cs] *= keep
        ic = _on_inner(cs, ci)
        if ic.stop <= ic.start:
            continue
        kin = keep[:, ic.start + c0 - cs.start : ic.stop + c0 - cs.start]
        if cut.plate > 0:
            # the subchondral plate is a curved shell: seen edge-on it is about half as dense
            # as a wall of cortex through the whole depth of the bone
            band = _ramp(
                (sdf[:, ic.start + c0 - cs.start : ic.stop + c0 - cs.start] - cut.gap - cut.plate)
                / h
            )
            inner[rs, ic] *= kin * (0.5 + 0.5 * band).astype(np.float32)
        else:
            inner[rs, ic] *= kin


def _apply_holes(bone: Bone, g: _Grid, outer: np.ndarray, inner: np.ndarray, ci: slice) -> None:
    """Punch the erosions (holes) into ``outer`` and ``inner``, in place."""
    u, v, h, c0 = g.u, g.v, g.h, ci.start
    for hole in bone.holes:
        ext = hole.r + 3 * h + 0.3
        rs = _window(hole.u - ext, hole.u + ext, u[0], h, u.size)
        cs = _window(hole.v - ext, hole.v + ext, v[0], g.hv, v.size)
        if rs.stop <= rs.start or cs.stop <= cs.start:
            continue
        d = np.sqrt((u[rs, None] - hole.u) ** 2 + (v[None, cs] - hole.v) ** 2)
        # erosions have ill-defined margins: a ~0.3 mm soft edge at any resolution
        f = (1.0 - hole.depth * np.clip(0.5 - (d - hole.r) / max(0.3, h), 0.0, 1.0)).astype(
            np.float32
        )
        outer[rs, cs] *= f
        ic = _on_inner(cs, ci)
        if ic.stop > ic.start:
            inner[rs, ic] *= f[:, ic.start + c0 - cs.start : ic.stop + c0 - cs.start]


def _attenuation(
    bone: Bone,
    u: np.ndarray,
    outer: np.ndarray,
    inner: np.ndarray,
    ci: slice,
    tile: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Attenuation from the half-chords: cortex, and textured medulla thinned by osteopenia
    (a metal implant is uniform). Overwrites ``outer``."""
    if bone.metal:
        return (2.0 * MU_METAL) * outer
    osteo = np.ones_like(u)
    for uc, amount, scale in bone.osteo:
        z = np.abs(u - uc) / scale
        # a Gaussian cut off smoothly at 2.5 scales: the effect stays periarticular
        osteo -= amount * np.exp(-(z**2)) * np.clip(2.5 - z, 0.0, 1.0)
    osteo = np.clip(osteo, 0.25, 1.0)
    # cortex x cfac + medulla x mfac x texture, with cortex = outer - inner
    cfac = ((2.0 * MU_CORTEX * bone.cortex_density) * (0.55 + 0.45 * osteo)).astype(np.float32)
    mfac = ((2.0 * MU_TRABECULAR * bone.density) * bone.trabecular(u) * osteo).astype(np.float32)
    att = outer
    att *= cfac[:, None]
    if inner.size:
        tex = _texture(tile, u.size, inner.shape[1], rng)
        med = tex * mfac[:, None]
        med -= cfac[:, None]
        med *= inner
        att[:, ci] += med
    return att


def bone_patch(
    bone: Bone,
    k: float,
    ss: int,
    rng: np.random.Generator,
    tile: np.ndarray,
    margin_mm: float = 1.0,
    sv: int | None = None,
) -> tuple[np.ndarray, float, float]:
    """Attenuation of one bone in its own frame at the output pitch.

    Returns ``(patch, u0, v0)``: rows are ``u = u0 + i / k``, columns ``v = v0 + j / k`` (mm).
    """
    sv = ss if sv is None else sv
    g = _patch_grid(bone, k, ss, sv, margin_mm)
    outer, inner, ci = _half_chords(bone, g)
    _apply_cutters(bone, g, outer, inner, ci)
    _apply_holes(bone, g, outer, inner, ci)
    att = _attenuation(bone, g.u, outer, inner, ci, tile, rng).astype(np.float32)
    if ss > 1 or sv > 1:
        att = cv2.resize(att, (g.nv, g.nu), interpolation=cv2.INTER_AREA)
    return att, g.u0, g.v0


def _warp_add(canvas: np.ndarray, patch: np.ndarray, M: np.ndarray) -> None:
    """Add ``patch`` into ``canvas`` through the affine ``M`` (patch pixel -> canvas pixel)."""
    nh, nw = patch.shape
    corners = np.array([[-1, -1, 1], [nw, -1, 1], [-1, nh, 1], [nw, nh, 1]], dtype=float) @ M.T
    H, W = canvas.shape
    x0 = max(0, int(math.floor(corners[:, 0].min())))
    y0 = max(0, int(math.floor(corners[:, 1].min())))
    x1 = min(W, int(math.ceil(corners[:, 0].max())) + 1)
    y1 = min(H, int(math.ceil(corners[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return
    Ms = M.copy()
    Ms[0, 2] -= x0
    Ms[1, 2] -= y0
    out = cv2.warpAffine(
        patch,
        Ms,
        (x1 - x0, y1 - y0),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=0,
    )
    canvas[y0:y1, x0:x1] += out


def draw_bone(
    canvas: np.ndarray,
    bone: Bone,
    place: Placement,
    ss: int,
    rng: np.random.Generator,
    tile: np.ndarray,
    sv: int | None = None,
) -> None:
    k = place.px_per_mm
    patch, u0, v0 = bone_patch(bone, k, ss, rng, tile, sv=sv)
    # patch pixel (col j, row i) -> local (v0 + j/k, u0 + i/k) -> hand -> image
    Ge_u = place.G @ bone.e_u
    Ge_v = place.G @ bone.e_v
    org = place.apply(bone.to_hand(u0, v0))
    M = np.array([[Ge_v[0] / k, Ge_u[0] / k, org[0]], [Ge_v[1] / k, Ge_u[1] / k, org[1]]])
    _warp_add(canvas, patch, M)


def draw_ring(canvas: np.ndarray, bone: Bone, u_at: float, radius: float, place: Placement) -> None:
    """A metal ring around a finger, seen as a band with bright edges."""
    k = place.px_per_mm
    width = max(3.0, 0.45 * radius)
    ro, ri = radius, radius - 1.7
    ss = 4
    m = 2.0 / k
    u0, v0 = u_at - width / 2 - m, -ro - m
    nu = int(math.ceil((width + 2 * m) * k)) + 1
    nv = int(math.ceil((2 * (ro + m)) * k)) + 1
    u = u0 + ((np.arange(nu * ss) + 0.5) / ss - 0.5) / k
    v = v0 + ((np.arange(nv * ss) + 0.5) / ss - 0.5) / k
    prof = np.sqrt(np.clip(1.0 - ((u - u_at) / (width / 2)) ** 2, 0.0, None))
    chord = 2.0 * (
        np.sqrt(np.clip(ro * ro - v * v, 0.0, None)) - np.sqrt(np.clip(ri * ri - v * v, 0.0, None))
    )
    att = (MU_METAL * prof[:, None] * chord[None, :]).astype(np.float32)
    att = cv2.resize(att, (nv, nu), interpolation=cv2.INTER_AREA)
    Ge_u, Ge_v = place.G @ bone.e_u, place.G @ bone.e_v
    org = place.apply(bone.to_hand(u0, v0))
    M = np.array([[Ge_v[0] / k, Ge_u[0] / k, org[0]], [Ge_v[1] / k, Ge_u[1] / k, org[1]]])
    _warp_add(canvas, att, M)


# --------------------------------------------------------------------------- soft tissue


_HALF = np.linspace(0.5 * math.pi, 1.5 * math.pi, 10)


def _capsule_poly(p0: np.ndarray, p1: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Polygon of a tapered capsule: a half circle around each end."""
    ang = math.atan2(p1[1] - p0[1], p1[0] - p0[0])
    a0 = ang + _HALF
    a1 = a0 + math.pi
    return np.concatenate(
        [
            np.stack([p0[0] + r0 * np.cos(a0), p0[1] + r0 * np.sin(a0)], axis=1),
            np.stack([p1[0] + r1 * np.cos(a1), p1[1] + r1 * np.sin(a1)], axis=1),
        ]
    )


def soft_tissue(
    hands: list[tuple[Hand, Placement]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Projected soft-tissue thickness (mm) and the hand mask (uint8), at output resolution.

    The outline (finger capsules, palm, forearm, swellings) is filled as a mask; its distance
    transform ``d`` and a smooth map of the local half-thickness ``R`` of each part (drawn at
    quarter resolution and blurred: it varies slowly) give the chord of a rounded body,
    ``2 sqrt(d (2R - d))`` with ``d`` capped at ``R``.
    """
    H, W = shape
    mask = np.zeros((H, W), np.uint8)
    q = 4
    hq, wq = max(1, -(-H // q)), max(1, -(-W // q))
    rmap = np.zeros((hq, wq), np.float32)
    sh = 4  # cv2 fixed-point shift: sub-pixel polygon vertices
    f = float(1 << sh)
    k = hands[0][1].px_per_mm

    def pts(xy: np.ndarray, scale: float = 1.0) -> np.ndarray:
        return np.round(xy * (f / scale)).astype(np.int32)

    def low(
        xy: np.ndarray,
    ) -> np.ndarray:  # full-resolution pixel coordinates -> quarter resolution
        return pts(xy + 0.5 - q / 2, q)

    for hand, place in hands:
        st = hand.soft
        for cap in st.capsules + st.swellings:
            p0 = place.apply(np.array(cap.p0))
            p1 = place.apply(np.array(cap.p1))
            poly = _capsule_poly(p0, p1, cap.r0 * k, cap.r1 * k)
            cv2.fillConvexPoly(mask, pts(poly), 255, cv2.LINE_8, sh)
            cv2.fillConvexPoly(rmap, low(poly), float((cap.r0 + cap.r1) / 2), cv2.LINE_8, sh)
        palm = place.apply(np.array(st.palm))
        fore = place.apply(np.array(st.forearm))
        cv2.fillPoly(mask, [pts(palm), pts(fore)], 255, cv2.LINE_8, sh)
        cv2.fillPoly(rmap, [low(palm)], float(st.palm_half), cv2.LINE_8, sh)
        cv2.fillPoly(rmap, [low(fore)], float(st.forearm_half), cv2.LINE_8, sh)
    rmap = cv2.GaussianBlur(rmap, (0, 0), max(0.5, 5.0 * k / q))
    rmap = cv2.resize(rmap, (W, H), interpolation=cv2.INTER_LINEAR)
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_5)
    d = np.clip(dist - 0.5, 0.0, None) * (1.0 / k)
    R = np.maximum(rmap, 3.0)
    dd = np.minimum(d, R)
    thick = 2.0 * np.sqrt(dd * (2.0 * R - dd))
    return thick.astype(np.float32), mask


# --------------------------------------------------------------------------- film


@dataclass
class Film:
    """Acquisition and display of one radiograph (drawn per image from the seed)."""

    exposure: float = 1.0  # scales all attenuation (kVp / thickness)
    background: float = 0.12  # display value of the open field
    white: float = 0.95  # display value of very dense matter
    gamma: float = 1.0
    blur_mm: float = 0.15  # focal spot and detector blur (Gaussian sigma)
    noise: float = 0.015  # quantum noise sigma at 512 px over ~220 mm
    heel: float = 0.03  # heel-effect gradient amplitude
    heel_angle: float = 0.0
    unsharp: float = 0.3  # CR edge enhancement amount
    collimation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # l, t, r, b fractions
    collimation_value: float = 0.85
    collimation_tilt: float = 0.0
    marker_mm: float = 11.0
    marker_box: bool = False
    marker_font: int = 0
    tips_may_be_cut: bool = False


def sample_film(rng: np.random.Generator) -> Film:
    col = tuple(float(rng.uniform(0.02, 0.10)) if rng.random() < 0.3 else 0.0 for _ in range(4))
    return Film(
        exposure=float(rng.uniform(0.82, 1.2)),
        background=float(rng.uniform(0.03, 0.3)),
        white=float(rng.uniform(0.8, 0.98)),
        gamma=float(np.exp(rng.normal(0.0, 0.12))),
        blur_mm=float(rng.uniform(0.06, 0.32)),
        noise=float(rng.uniform(0.006, 0.025)),
        heel=float(rng.uniform(0.0, 0.08)),
        heel_angle=float(rng.uniform(0.0, 2 * math.pi)),
        unsharp=float(rng.uniform(0.0, 0.8)),
        collimation=col,  # type: ignore[arg-type]
        collimation_value=float(rng.uniform(0.6, 0.97)) if rng.random() < 0.75 else 0.0,
        collimation_tilt=float(rng.normal(0.0, 1.2)),
        marker_mm=float(rng.uniform(8.0, 14.0)),
        marker_box=bool(rng.random() < 0.35),
        marker_font=int(rng.integers(0, 3)),
        tips_may_be_cut=bool(rng.random() < 0.06),
    )


def place_hand(
    hand: Hand,
    side: str,
    box: tuple[int, int, int, int],
    px_per_mm: float,
    rng: np.random.Generator,
    tips_may_be_cut: bool = False,
    margin_mm: float = 7.0,
) -> Placement:
    """Rotate (up to ~30 degrees) and shift a hand at random inside ``box`` (x0, y0, x1, y1)
    so that every scored landmark, and unless ``tips_may_be_cut`` every finger tip, lies in it."""
    x0, y0, x1, y1 = box
    lm = np.array(list(hand.landmarks.values()))
    tips = np.array(hand.tips)
    wide = rng.random() < 0.15
    rot = float(rng.uniform(-30, 30)) if wide else float(np.clip(rng.normal(0.0, 8.0), -30, 30))
    m = margin_mm * px_per_mm
    mt = 7.0 * px_per_mm  # the tip's soft tissue reaches beyond the bone
    u = (rng.random(2) + rng.random(2)) / 2  # triangular: films are roughly centred
    # first try with the finger tips in the field (smaller rotations if need be), then without
    for need_tips in (True, False) if not tips_may_be_cut else (False,):
        r = rot
        for _ in range(5):
            place = Placement.make(side, px_per_mm, r, (0.0, 0.0))
            p = place.apply(np.concatenate([lm, tips]) if need_tips else lm)
            mm = np.array([m] * len(lm) + [mt] * (len(p) - len(lm)))[:, None]
            lo = (np.array([x0, y0]) + mm - p).max(axis=0)
            hi = (np.array([x1 - 1, y1 - 1]) - mm - p).min(axis=0)
            if np.all(hi >= lo):
                return Placement(place.G, place.t + lo + u * (hi - lo))
            r *= 0.5
    # the landmarks do not fit at this scale: centre them (only for tiny fields)
    place = Placement.make(side, px_per_mm, 0.0, (0.0, 0.0))
    p = place.apply(lm)
    t = np.array([(x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2]) - (p.min(axis=0) + p.max(axis=0)) / 2
    return Placement(place.G, place.t + t)


_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def draw_marker(
    att: np.ndarray,
    letter: str,
    box: tuple[int, int, int, int],
    mask: np.ndarray,
    film: Film,
    px_per_mm: float,
    rng: np.random.Generator,
) -> None:
    """A lead side marker ("L"/"R") in a free corner of ``box``: bright, blurred like the film."""
    x0, y0, x1, y1 = box
    h = max(5, int(round(film.marker_mm * px_per_mm)))
    font = _FONTS[film.marker_font % len(_FONTS)]
    thick = max(1, int(round(h / 7)))
    scale = cv2.getFontScaleFromHeight(font, h, thick)
    (tw, th), base = cv2.getTextSize(letter, font, scale, thick)
    pad = max(2, h // 3)
    bw, bh = tw + 2 * pad, th + base + 2 * pad
    m = max(3, int(6 * px_per_mm))
    # corners first (where technologists put markers), then along the edges
    corners = [
        (x0 + m, y0 + m),
        (x1 - m - bw, y0 + m),
        (x0 + m, y1 - m - bh),
        (x1 - m - bw, y1 - m - bh),
    ]
    edges = []
    for f in np.linspace(0.2, 0.8, 4):
        xe = int(x0 + m + f * (x1 - x0 - 2 * m - bw))
        ye = int(y0 + m + f * (y1 - y0 - 2 * m - bh))
        edges += [(xe, y0 + m), (xe, y1 - m - bh), (x0 + m, ye), (x1 - m - bw, ye)]
    cands = corners + edges
    order = np.concatenate([rng.permutation(4), 4 + rng.permutation(len(edges))])
    H, W = att.shape
    for i in order:
        cx, cy = cands[int(i)]
        if cx < 0 or cy < 0 or cx + bw > W or cy + bh > H:
            continue
        if mask[max(0, cy - m) : cy + bh + m, max(0, cx - m) : cx + bw + m].any():
            continue
        patch = np.zeros((bh, bw), np.uint8)
        cv2.putText(patch, letter, (pad, pad + th), font, scale, 255, thick, cv2.LINE_AA)
        if film.marker_box:
            cv2.rectangle(patch, (0, 0), (bw - 1, bh - 1), 120, max(1, thick // 2), cv2.LINE_AA)
        att[cy : cy + bh, cx : cx + bw] += patch.astype(np.float32) * (3.0 / 255.0)
        return


def collimation_mask(shape: tuple[int, int], film: Film, keep: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the collimated (unexposed) border, or None; never covers ``keep`` points."""
    if not any(film.collimation):
        return None
    H, W = shape
    insets = [
        film.collimation[0] * W,
        film.collimation[1] * H,
        film.collimation[2] * W,
        film.collimation[3] * H,
    ]
    a = math.radians(film.collimation_tilt)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    # keep points in the rotated frame of the field
    kx = (keep[:, 0] - cx) * math.cos(a) + (keep[:, 1] - cy) * math.sin(a) + cx
    ky = -(keep[:, 0] - cx) * math.sin(a) + (keep[:, 1] - cy) * math.cos(a) + cy
    pad = 3.0
    insets[0] = min(insets[0], max(0.0, kx.min() - pad))
    insets[1] = min(insets[1], max(0.0, ky.min() - pad))
    insets[2] = min(insets[2], max(0.0, W - 1 - kx.max() - pad))
    insets[3] = min(insets[3], max(0.0, H - 1 - ky.max() - pad))
    if max(insets) < 1.0:
        return None
    xs = np.arange(W, dtype=np.float32) - cx
    ys = np.arange(H, dtype=np.float32) - cy
    ca, sa = math.cos(a), math.sin(a)
    rx = (xs * ca)[None, :] + (ys * sa)[:, None] + cx
    ry = (xs * -sa)[None, :] + (ys * ca)[:, None] + cy
    return (rx < insets[0]) | (ry < insets[1]) | (rx > W - 1 - insets[2]) | (ry > H - 1 - insets[3])


def compose(
    hands: list[tuple[Hand, Placement, str]],
    shape: tuple[int, int],
    film: Film,
    rng_tex: np.random.Generator,
    rng_noise: np.random.Generator,
    boxes: list[tuple[int, int, int, int]],
    with_film: bool = True,
) -> np.ndarray:
    """Render hands (each with its placement and side letter) into one float image in [0, 1]."""
    H, W = shape
    k = hands[0][1].px_per_mm
    size = min(H, W)
    ss, sv = supersampling(size)
    # texture tiles are cached per quarter-octave of pitch (a few per process, not per image)
    q = float(2.0 ** (round(4 * math.log2(k * ss)) / 4))
    tile = trabecular_tile(q, q * sv / ss)
    att = np.zeros((H, W), np.float32)
    for hand, place, _ in hands:
        for bone in hand.bones.values():
            draw_bone(att, bone, place, ss, rng_tex, tile, sv)
        if hand.ring_finger is not None:
            pp = hand.bones[f"pp{hand.ring_finger}"]
            j = hand.joints[f"mcp{hand.ring_finger}"]
            draw_ring(att, pp, hand.ring_at * pp.length, j.soft_radius * 0.92, place)
    soft, mask = soft_tissue([(h, p) for h, p, _ in hands], shape)
    att += MU_SOFT * soft
    if not with_film:
        return 1.0 - np.exp(-att)
    keep = np.concatenate([p.apply(np.array(list(h.landmarks.values()))) for h, p, _ in hands])
    col = collimation_mask(shape, film, keep)
    for (_, _, letter), box in zip(hands, boxes, strict=True):
        m = mask if col is None else (mask | (col.astype(np.uint8) * 255))
        draw_marker(att, letter, box, m, film, k, rng_noise)
    # display: exposure, transmission 1 - exp(-A), gamma, film base and white level
    img = 1.0 - np.exp(att * np.float32(-film.exposure))
    out = img
    if film.gamma != 1.0:
        out = np.exp(np.float32(film.gamma) * np.log(np.maximum(img, np.float32(1e-6))))
    out = np.float32(film.background) + np.float32(film.white - film.background) * out
    if film.unsharp > 0:
        q = 8
        small = cv2.resize(out, (max(1, W // q), max(1, H // q)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), max(0.5, 4.0 * k / q))
        low = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
        out = out + film.unsharp * (out - low)
    sigma = film.blur_mm * k
    if sigma > 0.2:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    if film.heel > 0:
        ca, sa = math.cos(film.heel_angle), math.sin(film.heel_angle)
        ramp_x = (np.arange(W, dtype=np.float32) / max(W - 1, 1) - 0.5) * ca
        ramp_y = (np.arange(H, dtype=np.float32) / max(H - 1, 1) - 0.5) * sa
        out = out + film.heel * (ramp_y[:, None] + ramp_x[None, :])
    # quantum noise: fewer photons behind dense matter, so more noise there; coarser pixels
    # collect more photons, so less noise per pixel at small image sizes
    sigma_n = film.noise * min(1.5, k / (512 / 220))
    if sigma_n > 1e-4:
        raw = np.frombuffer(rng_noise.bytes(2 * H * W), dtype=np.uint8).reshape(2, H, W)
        n = (raw[0].astype(np.float32) + raw[1]) * np.float32(1.0 / 104.2) - np.float32(
            255.0 / 104.2
        )
        out = out + n * (sigma_n * (0.6 + 0.9 * img))
    if col is not None:
        cv = film.collimation_value
        noise_c = (
            np.frombuffer(rng_noise.bytes(H * W), dtype=np.uint8).reshape(H, W).astype(np.float32)
            - 127.5
        )
        out = np.where(col, cv + noise_c * np.float32(sigma_n / 74.0), out)
    return np.clip(out, 0.0, 1.0).astype(np.float32)

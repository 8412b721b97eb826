"""svdh.core.preprocess: crop to the hand whatever surrounds it, then a deterministic square uint8 image."""

from __future__ import annotations

import glob
from pathlib import Path

import cv2
import numpy as np
import pytest

from svdh.core.errors import BadConfigError
from svdh.core.io import read_radiograph
from svdh.core.preprocess import PreprocessConfig, Transform, detect_hand, hand_box, preprocess


def _rot(pts: np.ndarray, angle: float, centre: tuple[float, float]) -> np.ndarray:
    a = np.deg2rad(angle)
    r = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return (pts - centre) @ r.T + centre


def draw_hand(
    h: int = 400,
    w: int = 320,
    *,
    angle: float = 0.0,
    flip: bool = False,
    cx: float = 0.5,
    scale: float = 1.0,
    background: float = 0.12,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A crude PA hand film: forearm from the bottom edge, palm, four fingers and a thumb.

    Returns (image float32 in [0, 1], tissue mask, bone mask). Soft tissue is a little
    brighter than the background, bones much brighter, with quantum noise on top.
    """
    rng = np.random.default_rng(seed)
    tissue = np.zeros((h, w), np.uint8)
    bone = np.zeros((h, w), np.uint8)
    c = np.array([cx * w, 0.62 * h])
    s = scale * min(h, w) / 320

    def capsule(mask: np.ndarray, p0: np.ndarray, p1: np.ndarray, width: float) -> None:
        q0, q1 = _rot(np.array([p0, p1]) * s + c, angle, tuple(c))
        cv2.line(
            mask, tuple(int(v) for v in q0), tuple(int(v) for v in q1), 1, max(1, int(width * s))
        )

    # forearm to the bottom edge (far beyond it, then clipped by the film)
    capsule(tissue, np.array([0, 40]), np.array([0, 400]), 110)
    capsule(bone, np.array([-22, 40]), np.array([-22, 400]), 26)
    capsule(bone, np.array([22, 50]), np.array([22, 400]), 20)
    # palm and carpus
    capsule(tissue, np.array([0, -20]), np.array([0, 40]), 150)
    for dx in (-40, -13, 13, 40):  # metacarpals and fingers
        capsule(tissue, np.array([dx, -20]), np.array([dx * 1.3, -190 + abs(dx)]), 34)
        capsule(bone, np.array([dx * 0.8, 20]), np.array([dx * 1.25, -180 + abs(dx)]), 14)
    capsule(tissue, np.array([60, 10]), np.array([125, -95]), 36)  # thumb
    capsule(bone, np.array([55, 15]), np.array([120, -88]), 15)
    for dy in (5, 25):
        capsule(bone, np.array([-30, dy]), np.array([30, dy]), 16)  # carpal rows
    if flip:
        tissue, bone = tissue[:, ::-1].copy(), bone[:, ::-1].copy()
    img = np.full((h, w), background, np.float32)
    img[tissue > 0] = background + 0.25
    img[bone > 0] = background + 0.6
    img = cv2.GaussianBlur(img, (0, 0), 1.2)
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)
    return np.clip(img, 0, 1), tissue > 0, bone > 0


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _inside(mask: np.ndarray, box: tuple[int, int, int, int]) -> float:
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].sum() / max(1, mask.sum()))


def _marker(img: np.ndarray, x: int, y: int, size: int = 24) -> np.ndarray:
    """Burn in a side marker: a bright 'L' in a dark box, as lead markers look on film."""
    m = np.zeros(img.shape, bool)
    img[y : y + size, x : x + size] = 0.05
    img[y + 3 : y + size - 3, x + 4 : x + 9] = 1.0
    img[y + size - 8 : y + size - 3, x + 4 : x + size - 4] = 1.0
    m[y : y + size, x : x + size] = True
    return m


# --------------------------------------------------------------------------- cropping


@pytest.mark.parametrize(
    ("angle", "flip"), [(0, False), (25, False), (-30, False), (0, True), (20, True)]
)
def test_crop_finds_rotated_and_flipped_hands(angle: float, flip: bool) -> None:
    img, tissue, bone = draw_hand(angle=angle, flip=flip, scale=0.8)
    box = hand_box(img)
    assert _inside(bone, box) > 0.99, "a bone is cut off"
    assert _inside(tissue, box) > 0.97
    assert _iou(box, _bbox(tissue)) > 0.85, (box, _bbox(tissue))


def test_crop_ignores_side_marker_and_collimation_border() -> None:
    img, tissue, bone = draw_hand(h=420, w=360, cx=0.58, scale=0.75)
    marker = _marker(img, 14, 60)
    img[:, -30:] = 0.85  # unexposed film at the right: a bright, flat collimation band
    img[:18, :] = 0.7  # and a grey one at the top
    box = hand_box(img)
    assert _inside(bone, box) > 0.99
    assert _inside(marker, box) < 0.05, f"the L marker is inside the hand box {box}"
    assert box[2] <= 360 - 30 + 2 and box[1] >= 18 - 2, f"the collimation border is inside {box}"
    assert _iou(box, _bbox(tissue & (np.arange(360) < 330)[None, :])) > 0.8


def test_crop_keeps_ring_and_normalisation_survives_it() -> None:
    img, tissue, bone = draw_hand(scale=0.8)
    ring = np.zeros(img.shape, bool)
    ys, xs = np.nonzero(bone[:160])
    cy, cx = int(np.median(ys)), int(np.median(xs))
    ring[cy - 4 : cy + 4, cx - 12 : cx + 12] = True
    img[ring] = 1.0  # metal: far brighter than bone
    box = hand_box(img)
    assert _inside(ring, box) == 1.0 and _inside(bone, box) > 0.99
    out, t = preprocess(img, PreprocessConfig(size=128), return_transform=True)
    ys, xs = np.nonzero(bone & ~ring)
    qx, qy = np.rint(t.map_points(np.stack([xs, ys], 1))).astype(int).T
    on_bone = out[np.clip(qy, 0, 127), np.clip(qx, 0, 127)]
    assert np.median(on_bone) > 150  # bones stay bright: the ring does not set the white point


def test_wrist_only_film_and_dual_hand_film() -> None:
    full, tissue, bone = draw_hand(h=600, w=400, scale=1.2)
    wrist, t_w, b_w = full[300:, :], tissue[300:, :], bone[300:, :]  # the carpus and forearm only
    box = hand_box(wrist)
    assert _inside(b_w, box) > 0.99 and _iou(box, _bbox(t_w)) > 0.85

    left, tl, bl = draw_hand(h=400, w=300, scale=0.75, seed=1)
    right, tr, br = draw_hand(h=400, w=300, scale=0.75, flip=True, seed=2)
    both = np.concatenate([left, right], axis=1)
    bone_both = np.concatenate([bl, br], axis=1)
    box = hand_box(both)
    assert _inside(bone_both, box) > 0.99, f"one of the two hands is cut: {box}"


def test_crop_on_other_exposures_and_backgrounds() -> None:
    for background, gain in ((0.0, 1.0), (0.35, 0.5), (0.05, 0.3)):
        img, tissue, bone = draw_hand(angle=10, scale=0.8, background=0.0)
        img = background + gain * img
        box = hand_box(img.astype(np.float32))
        assert _inside(bone, box) > 0.99 and _iou(box, _bbox(tissue)) > 0.8, (background, gain, box)


def test_heel_effect_gradient() -> None:
    img, tissue, bone = draw_hand(scale=0.8)
    img = img + np.linspace(0.0, 0.12, img.shape[1], dtype=np.float32)[None, :]  # anode heel
    box = hand_box(img)
    assert _inside(bone, box) > 0.99 and _iou(box, _bbox(tissue)) > 0.8


def test_blank_and_tiny_images_fall_back_to_the_whole_image() -> None:
    assert hand_box(np.zeros((50, 80), np.float32)) == (0, 0, 80, 50)
    assert not detect_hand(np.full((50, 80), 0.3, np.float32)).found
    out = preprocess(np.zeros((5, 7), np.float32), PreprocessConfig(size=32))
    assert out.shape == (32, 32) and out.max() == 0


# --------------------------------------------------------------------------- the output


def test_output_is_square_uint8_deterministic_and_uses_the_full_range() -> None:
    img, *_ = draw_hand(h=500, w=300, angle=12)
    cfg = PreprocessConfig(size=96)
    a = preprocess(img, cfg)
    b = preprocess(img.copy(), cfg)
    assert a.shape == (96, 96) and a.dtype == np.uint8
    assert a.tobytes() == b.tobytes()
    assert a.min() == 0 and a.max() >= 240
    # padded to square keeping aspect: the tall hand leaves black columns on both sides
    assert a[:, :3].max() == 0 and a[:, -3:].max() == 0


def test_exposure_changes_do_not_change_the_output() -> None:
    img, *_ = draw_hand(angle=-8, scale=0.8)
    cfg = PreprocessConfig(size=128)
    a = preprocess(img, cfg).astype(int)
    b = preprocess(0.15 + 0.6 * img, cfg).astype(int)
    assert np.abs(a - b).mean() < 2.0


def test_transform_maps_points_into_the_output() -> None:
    img, tissue, bone = draw_hand(h=480, w=360, angle=15, scale=0.8)
    ys, xs = np.nonzero(bone)
    k = np.argmin(ys)  # the tip of the highest finger bone
    px, py = float(xs[k]), float(ys[k] + 12)
    img[int(py) - 3 : int(py) + 4, int(px) - 3 : int(px) + 4] = 3.0  # a bright dot on it
    out, t = preprocess(img, PreprocessConfig(size=160, high_pct=99.99), return_transform=True)
    assert isinstance(t, Transform)
    qx, qy = t.map_points([px, py])
    oy, ox = np.unravel_index(np.argmax(out.astype(float) + 0), out.shape)
    assert abs(ox - qx) <= 1.5 and abs(oy - qy) <= 1.5, ((ox, oy), (qx, qy))
    np.testing.assert_allclose(
        t.inverse(t.map_points([[px, py], [0, 0]])), [[px, py], [0, 0]], atol=1e-9
    )
    assert Transform.from_dict(t.to_dict()) == t
    assert t.box[0] >= t.x0 and t.box[2] <= t.x0 + t.side


def test_no_crop_keeps_the_whole_film() -> None:
    img, *_ = draw_hand(h=200, w=100)
    out, t = preprocess(img, PreprocessConfig(size=64, crop=False), return_transform=True)
    assert (t.x0, t.y0, t.side) == (-50, 0, 200)
    assert t.map_points([0, 0])[0] == pytest.approx((0.5 + 50) * 64 / 200 - 0.5)


def test_clahe_option() -> None:
    img, *_ = draw_hand(scale=0.8)
    plain = preprocess(img, PreprocessConfig(size=128))
    eq = preprocess(img, PreprocessConfig(size=128, clahe=True))
    assert eq.dtype == np.uint8 and eq.shape == plain.shape
    assert np.abs(eq.astype(int) - plain.astype(int)).mean() > 2
    assert preprocess(img, PreprocessConfig(size=128, clahe=True)).tobytes() == eq.tobytes()


def test_accepts_radiographs_uint8_and_uint16() -> None:
    img, *_ = draw_hand(scale=0.8)
    a = preprocess(img, PreprocessConfig(size=64))
    b = preprocess((img * 65535).astype(np.uint16), PreprocessConfig(size=64))
    c = preprocess((img * 255).astype(np.uint8), PreprocessConfig(size=64))
    assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(a.astype(int) - c).mean() < 2


def test_config_round_trip_and_validation() -> None:
    cfg = PreprocessConfig(size=128, clahe=True, margin=0.1)
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(BadConfigError, match="unknown preprocessing option"):
        PreprocessConfig.from_dict({**cfg.to_dict(), "sise": 3})
    with pytest.warns(UserWarning, match="algorithm version 999"):
        assert PreprocessConfig.from_dict({**cfg.to_dict(), "algorithm_version": 999}) == cfg
    for bad in ({"size": 4}, {"low_pct": 60, "high_pct": 50}, {"margin": -1}):
        with pytest.raises(BadConfigError):
            PreprocessConfig(**bad)


# --------------------------------------------------------------------------- real films


def _bone_pixels(px: np.ndarray) -> np.ndarray:
    """An independent reference: the brightest structures (2-class Otsu) of large extent."""
    u8 = np.clip(px * 255, 0, 255).astype(np.uint8)
    _, m = cv2.threshold(cv2.GaussianBlur(u8, (0, 0), 1), 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m)
    big = [i for i in range(1, n) if stats[i, cv2.CC_STAT_AREA] > 0.02 * m.size]
    return np.isin(lab, big)


def _real_files(root: Path, pattern: str) -> list[str]:
    return sorted(glob.glob(str(root / pattern)))


@pytest.mark.real_data
def test_every_real_radiograph_decodes_and_crops_to_the_hand(
    ra2_dream_dir: Path, rsna_sample_dir: Path
) -> None:
    files = _real_files(ra2_dream_dir, "*.jpg") + _real_files(rsna_sample_dir, "*.png")
    assert len(files) == 12 + 20
    cfg = PreprocessConfig(size=128)
    for f in files:
        rad = read_radiograph(f)
        assert rad.pixels.ndim == 2 and rad.pixels.max() > 0.5, f
        out, t = preprocess(rad, cfg, return_transform=True)
        assert out.shape == (128, 128) and 30 < out.mean() < 200, f
        if "F.jpg" in f:  # the feet of RA2-DREAM are decoded, not hands to crop
            continue
        # References at a quarter of the resolution (the test's own cost stays small).
        small = cv2.resize(
            rad.pixels,
            (rad.pixels.shape[1] // 4, rad.pixels.shape[0] // 4),
            interpolation=cv2.INTER_AREA,
        )
        x0, y0, x1, y1 = t.box
        box4 = (x0 // 4, y0 // 4, -(-x1 // 4), -(-y1 // 4))
        assert _inside(_bone_pixels(small), box4) > 0.97, f"{f}: the crop {t.box} cuts the hand"
        if "rsna" in f:
            # Background removed to black: the box is tight, each of its sides touches tissue.
            tissue = cv2.GaussianBlur(small, (0, 0), 1) > 0.08
            assert _inside(tissue, box4) > 0.99, f
            bx0, by0, bx1, by1 = box4
            for side in (
                np.s_[by0:by1, bx0 : bx0 + 5],
                np.s_[by0:by1, bx1 - 5 : bx1],
                np.s_[by0 : by0 + 5, bx0:bx1],
                np.s_[by1 - 5 : by1, bx0:bx1],
            ):
                assert tissue[side].any(), f"{f}: the crop {t.box} has empty film along a side"


@pytest.mark.real_data
def test_real_100px_films_with_markers_and_frames_preprocess(rsna_100px_dir: Path) -> None:
    files = _real_files(rsna_100px_dir / "images", "*.png")[::380]  # 30 films across the set
    for f in files:
        rad = read_radiograph(f)
        out, t = preprocess(rad, PreprocessConfig(size=64), return_transform=True)
        x0, y0, x1, y1 = t.box
        assert (x1 - x0) >= 30 and (y1 - y0) >= 40, f"{f}: implausibly small hand box {t.box}"
        # The brightest tenth of the film's central part: bone, and any marker (up to ~15% of it).
        px = cv2.GaussianBlur(rad.pixels, (0, 0), 1)
        centre = np.zeros(px.shape, bool)
        centre[10:-10, 10:-10] = True
        bright = centre & (px > np.percentile(px[centre], 90))
        assert _inside(bright, t.box) > 0.8, f


# --------------------------------------------------------------------------- phantom cohorts


@pytest.mark.parametrize("dual", [False, True])
def test_every_phantom_joint_lies_inside_the_crop(tmp_path: Path, dual: bool) -> None:
    """Phantoms carry every joint's position: none may fall outside the crop, and the
    Transform carries each to its place in the model's input."""
    synth = pytest.importorskip(
        "svdh.synth", reason="the phantom generator (svdh synth) is not installed"
    )
    synth.generate_cohort(tmp_path, n=5, size=256, seed=11 + dual, dual_hand=dual)
    doc = synth.load_landmarks(tmp_path)
    cfg = PreprocessConfig(size=128)
    for name, entry in doc["images"].items():
        out, t = preprocess(read_radiograph(tmp_path / name), cfg, return_transform=True)
        pts = np.array([[lm["x"], lm["y"]] for lm in entry["landmarks"].values()])
        assert len(pts) >= 21 * (2 if dual else 1)
        x0, y0, x1, y1 = t.box
        assert (
            (pts[:, 0] >= x0) & (pts[:, 0] < x1) & (pts[:, 1] >= y0) & (pts[:, 1] < y1)
        ).all(), f"{name}: a joint outside {t.box}"
        q = t.map_points(pts)
        assert ((q >= 0) & (q < cfg.size)).all(), name
        assert out[np.rint(q[:, 1]).astype(int), np.rint(q[:, 0]).astype(int)].mean() > 60, (
            f"{name}: joints are not on the hand"
        )

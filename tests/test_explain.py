"""Grad-CAM heat maps and their measured localisation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from predict_world import run_cli as svdh
from svdh.core.errors import BadConfigError
from svdh.core.preprocess import hand_mask
from svdh.inference.gradcam import (
    DEFAULT_CAM_METHOD,
    CamMethod,
    ClassTarget,
    Explainer,
    ScoreTarget,
    default_target_layer,
    method_layers,
    parse_method,
)
from svdh.inference.localisation import (
    HandLandmarks,
    damage_region,
    disc_mask,
    score_map,
    summarise,
)

torch.set_num_threads(1)  # as the other test modules: steady on a shared 2-core machine


# --------------------------------------------------------------------------- the measure itself
def _hand(points, damaged):
    return HandLandmarks({f"j{i}": p for i, p in enumerate(points)}, {f"j{i}" for i in damaged})


def test_mass_and_pointing_on_constructed_maps():
    pts = [(10.0, 10.0), (50.0, 10.0), (10.0, 50.0), (50.0, 50.0)]  # hand size: diagonal 56.6 px
    hand = _hand(pts, damaged=[1])
    region = damage_region((64, 64), [hand], radius_frac=0.1)  # radius 5.66 px around (50, 10)
    assert (
        region[10, 50]
        and not region[10, 10]
        and region.sum() == disc_mask((64, 64), np.array([[50, 10]]), 5.657).sum()
    )

    on = np.zeros((64, 64))
    on[9:12, 49:52] = 1.0  # all heat on the damaged joint
    s = score_map(on, region)
    assert s.mass == pytest.approx(1.0) and s.hit
    off = np.zeros((64, 64))
    off[10, 10] = 1.0  # all heat on a healthy joint
    s = score_map(off, region)
    assert s.mass == 0.0 and not s.hit
    flat = np.ones((64, 64))  # a uniform map puts exactly the disc's area share on it
    s = score_map(flat, region)
    assert s.mass == pytest.approx(region.mean()) == pytest.approx(s.random_mass)
    # the hand-restricted baseline: the disc's share of the hand's pixels
    hm = np.zeros((64, 64), bool)
    hm[:32] = True
    assert score_map(on, region, hm).random_hand_mass == pytest.approx(
        (region & hm).sum() / hm.sum()
    )


def test_random_baseline_matches_random_maps():
    """The analytic baseline equals what i.i.d. random maps score on average."""
    rng = np.random.default_rng(0)
    pts = [(12.0, 20.0), (40.0, 44.0), (30.0, 8.0)]
    region = damage_region((48, 48), [_hand(pts, damaged=[0, 1])], radius_frac=0.12)
    sims = [score_map(rng.random((48, 48)), region) for _ in range(2000)]
    summ = summarise(sims)
    assert summ["mass_on_damaged"] == pytest.approx(summ["random_mass"], rel=0.02)
    assert summ["pointing_game"] == pytest.approx(summ["random_pointing"], abs=0.03)
    assert summ["n_images"] == 2000


def test_each_hand_gets_its_own_radius():
    small = _hand([(5.0, 5.0), (15.0, 15.0)], damaged=[0])  # diagonal 14 px
    big = _hand([(20.0, 20.0), (60.0, 60.0)], damaged=[1])  # diagonal 57 px
    region = damage_region((64, 64), [small, big], radius_frac=0.1)
    assert region[5, 5] and not region[5, 8]  # radius 1.4 px
    assert region[60, 60] and region[60, 55]  # radius 5.7 px


# --------------------------------------------------------------------------- Grad-CAM on a model that learnt
S = 64
LANDMARKS = np.array([[16, 16], [32, 14], [48, 16], [16, 40], [32, 44], [48, 40]], float)


def _toy(n: int, rng: np.random.Generator):
    """Joint-like discs; a damaged joint has a dark notch; the label counts damaged joints."""
    yy, xx = np.mgrid[0:S, 0:S]
    x = np.zeros((n, 1, S, S), np.float32)
    dmg = rng.random((n, len(LANDMARKS))) < 0.3
    for i in range(n):
        img = 0.05 + rng.normal(0, 0.02, (S, S))
        img[6:58, 6:58] += 0.35
        for j, (cx, cy) in enumerate(LANDMARKS):
            img[(xx - cx) ** 2 + (yy - cy) ** 2 <= 9] += 0.3
            if dmg[i, j]:
                img[(xx - cx + 2) ** 2 + (yy - cy) ** 2 <= 4] -= 0.45
        x[i, 0] = np.clip(img, 0, 1)
    return torch.from_numpy(x), torch.from_numpy(dmg.sum(1).astype(np.float32)), dmg


class _SmallNet(torch.nn.Module):
    """Three conv blocks at stride 4 (a 16 x 16 map for Grad-CAM), global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        c, b, r = torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU
        self.features = torch.nn.Sequential(
            c(1, 16, 3, padding=1),
            b(16),
            r(),
            torch.nn.MaxPool2d(2),
            c(16, 32, 3, padding=1),
            b(32),
            r(),
            torch.nn.MaxPool2d(2),
            c(32, 32, 3, padding=1),
            b(32),
            r(),
        )
        self.head = torch.nn.Linear(32, 1)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


@pytest.mark.slow
def test_gradcam_of_a_trained_model_points_at_the_damage():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = _SmallNet()
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x, y, _ = _toy(384, rng)
    for _ in range(5):
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.mse_loss(net(x[idx]).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    xt, yt, dt = _toy(32, rng)
    with torch.no_grad():
        assert np.corrcoef(net(xt).squeeze(1).numpy(), yt.numpy())[0, 1] > 0.9  # it learnt
    ex = Explainer([[net]], [{"backbone": "toy", "task": "regression"}], target_layer="features")
    maps = ex.explain(xt).ensemble
    scores = []
    for i in range(len(xt)):
        hand = HandLandmarks(
            {f"j{k}": tuple(p) for k, p in enumerate(LANDMARKS)},
            {f"j{k}" for k in np.flatnonzero(dt[i])},
        )
        # radius 0.15 x 44 px = 6.6 px: one joint (joints lie 16 px apart)
        region = damage_region((S, S), [hand], radius_frac=0.15)
        if region.any():
            scores.append(score_map(maps[i], region, hand_mask(xt[i, 0].numpy())))
    s = summarise(scores)
    assert s["mass_on_damaged"] > 3 * s["random_mass"]
    assert s["mass_on_damaged"] > 2 * s["random_hand_mass"]
    assert s["pointing_game"] > 0.75 and s["pointing_game"] > 4 * s["random_pointing"]


# --------------------------------------------------------------------------- SvdH models
@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2_050", "densenet121"])
def test_default_target_layer_of_each_backbone(backbone):
    from svdh.models.net import build_model

    torch.manual_seed(0)
    net = build_model(backbone, "regression").eval()
    net.set_target_stats([10.0], [5.0])
    assert net.get_submodule(default_target_layer(backbone)) is net.cam_target_layer()
    maps = Explainer([[net]], [net.config]).explain(torch.rand(2, 1, 64, 64))
    assert maps.ensemble.shape == (2, 64, 64) and maps.members.shape == (1, 2, 64, 64)
    assert (
        np.isfinite(maps.ensemble).all() and maps.ensemble.min() >= 0 and maps.ensemble.max() <= 1
    )


def test_targets_and_layer_override():
    from svdh.models.net import build_model

    torch.manual_seed(0)
    ordinal = build_model("resnet18", "ordinal", n_classes=7).eval()
    out = torch.tensor([[2.0, 1.0, -1.0, -3.0, -4.0, -5.0]])
    assert ClassTarget("ordinal", 2)(out[0]) == 1.0 and ClassTarget("ordinal", 0)(out[0]) == -2.0
    assert ScoreTarget("ordinal")(out[0]) == pytest.approx(torch.sigmoid(out[0]).sum())
    reps = np.arange(7, dtype=float)
    logits = torch.zeros(7)
    assert ScoreTarget("classification", reps)(logits) == pytest.approx(3.0)
    x = torch.rand(2, 1, 64, 64)
    for head in ("score", "class"):
        ex = Explainer([[ordinal]], [ordinal.config], head=head, target_layer="backbone.layer3")
        assert ex.layers == ["backbone.layer3"]
        m = ex.explain(x).ensemble
        assert m.shape == (2, 64, 64) and np.isfinite(m).all()
    with pytest.raises(BadConfigError, match="not found.*backbone.layer4"):
        Explainer([[ordinal]], [ordinal.config], target_layer="backbone.layer9")


def test_cam_method_names_and_their_layers():
    assert parse_method("gradcam") == CamMethod("GradCAM")
    assert parse_method("gradcam++" + "+x-next+aug") == CamMethod(
        "GradCAMPlusPlus", deep="next", aug_smooth=True
    )
    x_next = parse_method("gradcam+x-next")
    assert method_layers(x_next, "resnet18", 96) == ["backbone.layer2", "backbone.layer3"]
    assert method_layers(x_next, "mobilenet_v2", 96) == [
        "backbone.features.6",
        "backbone.features.13",
    ]
    assert method_layers(parse_method("gradcam+fine"), "resnet18", 96) == ["backbone.layer1"]
    # at 512 px the default is already the deepest layer: nothing deeper to fuse with
    assert method_layers(parse_method("gradcam+x-deepest"), "resnet18", 512) == ["backbone.layer4"]
    for bad in ("gradcam+", "gradcam+foo", "nocam", "gradcam++x"):
        with pytest.raises(BadConfigError, match="unknown CAM method"):
            parse_method(bad)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v2"])
def test_default_method_gives_normalised_maps_of_at_least_12x12_cells(backbone):
    from svdh.models.backbones import get_backbone
    from svdh.models.net import build_model

    layers = method_layers(parse_method(DEFAULT_CAM_METHOD), backbone, 96)
    stride = dict(get_backbone(backbone).family.cam_layers)[layers[0].removeprefix("backbone.")]
    assert 96 // stride >= 12  # the finest layer of the map sets its cells
    # seed 1: an untrained MobileNetV2 of seed 0 has no positive evidence at features.13 for
    # any input, so its product map is blank (no member map of the demo bundles on 80 held-out
    # hands was)
    torch.manual_seed(1)
    net = build_model(backbone, "regression").eval()
    net.set_target_stats([10.0], [5.0])
    ex = Explainer([[net]], [net.config], image_size=96)
    assert ex.method == DEFAULT_CAM_METHOD and ex.layers == [" x ".join(layers)]
    maps = ex.explain(torch.rand(3, 1, 96, 96)).ensemble
    assert maps.shape == (3, 96, 96) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 and (maps.max(axis=(1, 2)) > 0.99).all()


def test_map_of_a_flip_tta_model_is_the_mean_of_both_views():
    """The score of a flip-TTA model is the mean over the image and its mirror: so is its map
    (before the fix, the hooks saw both views and the map explained the image's half only)."""
    from svdh.models.net import build_model

    torch.manual_seed(0)
    net = build_model("resnet18", "regression").eval()
    net.set_target_stats([10.0], [5.0])
    assert net.uses_flip_tta()
    x = torch.rand(2, 1, 64, 64)
    got = Explainer([[net]], [net.config], method="gradcam").explain(x).ensemble
    net.config["tta_flip"] = False
    one = Explainer([[net]], [net.config], method="gradcam")
    a = one.explain(x).ensemble
    b = one.explain(torch.flip(x, dims=[-1])).ensemble[..., ::-1]
    ref = (a + b) / 2
    ref /= ref.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert np.abs(got - a).max() > 0.05  # the mirror view does change the map


def test_scoring_between_maps_leaves_no_activations_on_the_hooks():
    """The CAM's hooks are on the target layers only while a map is made: images scored in
    between (a web service's uploads) neither pile up in its lists (a leak) nor change the
    next map."""
    from svdh.models.net import build_model

    torch.manual_seed(0)
    net = build_model("resnet18", "regression").eval()
    net.set_target_stats([10.0], [5.0])
    ex = Explainer([[net]], [net.config])
    x = torch.rand(2, 1, 64, 64)
    first = ex.explain(x).ensemble
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(4, 1, 64, 64))
    hooks = ex.cams[0][0].activations_and_grads
    assert hooks.activations == [] and hooks.gradients == []
    np.testing.assert_allclose(ex.explain(x).ensemble, first, atol=1e-6)


def test_cam_method_option_is_checked_before_any_image_is_scored(world, tmp_path):
    r = svdh("predict", world.cohort, "--model", world.run_bundle, "--cam", tmp_path / "maps",
             "--cam-method", "gradcam+sharpen", "-o", tmp_path / "p.csv")  # fmt: skip
    assert r.returncode != 0 and "unknown CAM method 'gradcam+sharpen'" in r.stderr
    assert not (tmp_path / "p.csv").exists()


def test_ensemble_map_is_the_weighted_member_mean():
    from svdh.models.net import build_model

    torch.manual_seed(0)
    a, b = (build_model("resnet18", "regression").eval() for _ in range(2))
    for n in (a, b):
        n.set_target_stats([10.0], [5.0])
    r = Explainer([[a], [b]], [a.config, b.config], weights=[3.0, -1.0]).explain(
        torch.rand(2, 1, 64, 64)
    )
    np.testing.assert_allclose(r.ensemble, 0.75 * r.members[0] + 0.25 * r.members[1], atol=1e-6)


# --------------------------------------------------------------------------- a phantom cohort, end to end
@pytest.mark.slow
def test_explain_cli_writes_localisation_that_evaluate_shows(world, tmp_path):
    ens = tmp_path / "ens"
    shutil.copytree(world.ensemble, ens)
    r = svdh(
        "explain",
        world.cohort,
        "--model",
        world.ens_bundle,
        "--out",
        ens,
        "--gallery",
        "3",
        "--max-images",
        "8",
        "--batch-size",
        "8",
    )
    assert r.returncode == 0, r.stderr
    loc = json.loads((ens / "localisation.json").read_text())
    for key in ("mass_on_damaged", "pointing_game", "random_mass", "random_pointing", "n_images"):
        assert key in loc
    assert loc["n_images"] + loc["n_images_without_damage"] == 8
    assert 0 <= loc["mass_on_damaged"] <= 1 and 0 <= loc["pointing_game"] <= 1
    assert (
        0 < loc["random_mass"] < loc["random_hand_mass"] < 1
    )  # discs are a bigger share of the hand
    # the layer the registry picks for the bundle's 64 px input: a map of at least 12 x 12
    from svdh.models.backbones import get_backbone

    spec = get_backbone("resnet18")
    assert set(loc["by_member"]) == {"reg", "ord"}
    assert loc["method"] == DEFAULT_CAM_METHOD
    layers = method_layers(parse_method(DEFAULT_CAM_METHOD), "resnet18", 64)
    assert layers[0] == f"backbone.{spec.cam_layer_for(64)}"
    assert loc["target_layers"]["reg"] == " x ".join(layers)
    assert spec.cam_map_size(64) >= 12
    gallery = sorted((ens / "cam_gallery").glob("*.png"))
    assert len(gallery) == 3
    from PIL import Image

    assert Image.open(gallery[0]).size == (512, 512)
    ev = svdh("evaluate", ens, "--format", "json", "--boot", "20")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["localisation"]["mass_on_damaged"] == pytest.approx(
        loc["mass_on_damaged"]
    )


def test_cohort_landmarks_single_and_dual_hand_films(tmp_path):
    import json as _json

    from svdh.inference.localisation import cohort_hands
    from svdh.synth import generate_cohort

    generate_cohort(tmp_path / "dual", n=2, size=160, seed=1, severity="uniform", dual_hand=True)
    doc = _json.loads((tmp_path / "dual" / "landmarks.json").read_text())
    for name, hands in cohort_hands(tmp_path / "dual").items():
        assert len(hands) == 2  # each side of a dual-hand film is a hand of its own
        flat = doc["images"][name]["landmarks"]
        assert all(len(pts) == 22 for pts, _ in hands)
        xs = [np.mean([p[0] for p in pts.values()]) for pts, _ in hands]
        assert abs(xs[0] - xs[1]) > 40  # the two hands lie side by side
        damaged = {k for k, v in flat.items() if (v["erosion"] or 0) > 0 or (v["jsn"] or 0) > 0}
        assert sum(len(b) for _, b in hands) == len(damaged)


# --------------------------------------------------------------------------- turned, mirrored and split films (canontrain)
def _canonical_predictor(world):
    """The world's regression bundle as if trained with ``canonical: true``: every hand is cut
    out, turned fingers-up and shown as a left hand before the model (the weights do not matter
    to where the landmarks land)."""
    from svdh.inference.bundle import load_bundle
    from svdh.inference.predictor import Predictor

    bundle = load_bundle(world.run_bundle)
    bundle.manifest = {**bundle.manifest, "preprocess": {**bundle.preprocess, "canonical": True}}
    return Predictor(bundle)


def _upright_and_faulty(root, dual):
    """The same phantoms twice: as drawn, and turned by quarter turns and mirrored (the faults
    have their own random stream: the hands, their damage and noise are the same)."""
    from svdh.synth import generate_cohort

    out = []
    for tag, faults in (("up", ""), ("turned", "rotate,mirror")):
        d = root / f"{tag}-{int(dual)}"
        generate_cohort(
            d, n=2, size=160, seed=4, severity="uniform", dual_hand=dual, faults=faults,
            fault_rate=1.0,
        )  # fmt: skip
        out.append(d)
    return out


def _by_group(items, marks, groups):
    """{landmark group index: (item, its HandLandmarks)}: the group whose film points the
    item's own map sends exactly onto the hand's landmarks."""
    out = {}
    for it, hands in zip(items, marks, strict=True):
        for hand in hands:
            keys = sorted(hand.points)
            got = np.array([hand.points[k] for k in keys])
            (g,) = [
                g
                for g, (pts, _) in enumerate(groups)
                if np.allclose(it.hand.film_to_input(np.array([pts[k] for k in keys])), got)
            ]
            out[g] = (it, hand)
    return out


@pytest.mark.parametrize("dual", [False, True])
def test_landmarks_of_turned_and_mirrored_films_land_where_the_upright_ones_do(
    world, tmp_path, dual
):
    from svdh.core.io import read_radiograph
    from svdh.inference.localisation import cohort_hands, input_landmarks

    predictor = _canonical_predictor(world)
    up, turned = _upright_and_faulty(tmp_path, dual)
    truth = json.loads((turned / "landmarks.json").read_text())["images"]
    worst, n_checked = 0.0, 0
    for name, groups_up in cohort_hands(up / "landmarks.json").items():
        groups_t = cohort_hands(turned / "landmarks.json")[name]
        assert truth[name]["faults"]["rotation_k"] or truth[name]["faults"]["mirrored"]
        mapped = []
        for root, groups in ((up, groups_up), (turned, groups_t)):
            items = predictor.prepare_hands(name, read_radiograph(root / name))
            assert len(items) == (2 if dual else 1) and all(it.error is None for it in items)
            marks = input_landmarks(items, groups)
            assert [len(m) for m in marks] == [1] * len(items)  # each hand its own landmarks
            mapped.append(_by_group(items, marks, groups))
        assert sorted(mapped[0]) == sorted(mapped[1]) == list(range(len(groups_up)))
        for g, (it_up, h_up) in mapped[0].items():
            it_t, h_t = mapped[1][g]
            keys = sorted(h_up.points)
            p_up = np.array([h_up.points[k] for k in keys])
            p_t = np.array([h_t.points[k] for k in keys])
            # the same joints on the same pixels of the 64 px input, within a pixel
            worst = max(worst, float(np.abs(p_up - p_t).max()))
            assert h_up.damaged == h_t.damaged
            r_up = damage_region(it_up.x.shape, [h_up], 0.06)
            r_t = damage_region(it_t.x.shape, [h_t], 0.06)
            if r_up.any():
                assert (r_up & r_t).sum() / (r_up | r_t).sum() > 0.75, name
            else:
                assert not r_t.any()
            # the crop's transform alone (what localisation used) misses them on a turned film
            film = np.array([groups_t[g][0][k] for k in keys])
            assert np.abs(it_t.transform.map_points(film) - p_t).max() > 3.0
            n_checked += 1
    assert worst < 1.0, worst
    assert n_checked == 4


@pytest.mark.slow
def test_explain_scores_turned_mirrored_and_split_films_as_the_upright_ones(world, tmp_path):
    """``svdh explain``'s figures on a turned and mirrored copy of a phantom set equal those on
    the set as drawn: every hand's map scored against its own joints (both hands of a film)."""
    from svdh.inference.localisation import explain_cohort

    predictor = _canonical_predictor(world)
    for dual in (False, True):
        up, turned = _upright_and_faulty(tmp_path, dual)
        a = explain_cohort(predictor, up, tmp_path / f"a{int(dual)}", gallery=4)
        b = explain_cohort(predictor, turned, tmp_path / f"b{int(dual)}", gallery=4)
        assert a["n_images"] + a["n_images_without_damage"] == 4  # hands: 2 per dual film
        assert (b["n_images"], b["n_hands_refused"]) == (a["n_images"], 0)
        assert b["random_mass"] == pytest.approx(a["random_mass"], abs=0.005)
        assert b["random_hand_mass"] == pytest.approx(a["random_hand_mass"], abs=0.01)
        assert b["mass_on_damaged"] == pytest.approx(a["mass_on_damaged"], abs=0.03)
        # the discs lie on the hand: a bigger share of the hand than of the image
        assert a["random_hand_mass"] > 2 * a["random_mass"]
        names = sorted(p.name for p in (tmp_path / f"b{int(dual)}" / "cam_gallery").glob("*"))
        assert len(names) == 4 and (
            not dual or all(n.endswith(("-L.png", "-R.png")) for n in names)
        )

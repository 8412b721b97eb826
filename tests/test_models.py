"""Backbones, heads, losses, initialisation and fine-tuning schemes (svdh.models)."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from svdh.core.errors import BadConfigError, WeightsUnavailableError
from svdh.core.scoring import SeverityBins
from svdh.models import BACKBONES, build_model, predict_outputs
from svdh.models.backbones import stage_of
from svdh.models.losses import OrdinalLoss, class_weights_from_labels, make_loss
from svdh.models.net import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    average_raw,
    imagenet_cache_path,
    ordinal_probs,
)
from svdh.models.schemes import (
    Scheme,
    apply_scheme,
    hold_frozen_batchnorm,
    param_groups,
    stage_parameters,
)

torch.set_num_threads(1)
HAND = SeverityBins.hand()
PATIENT = SeverityBins.patient()


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_builds_runs_and_its_stages_cover_it(name: str) -> None:
    torch.manual_seed(0)
    m = build_model(name, "ordinal").eval()
    with torch.no_grad():
        out = m(torch.rand(2, 1, 40, 40))
    assert out.shape == (2, HAND.n_classes - 1)
    # every backbone parameter belongs to exactly one stage, stages ordered stem -> top
    counts = {}
    for pname, _ in m.backbone.named_parameters():
        hits = [
            i
            for i, prefixes in enumerate(m.spec.stages)
            if any(pname == p or pname.startswith(p + ".") for p in prefixes)
        ]
        assert len(hits) == 1, f"{name}: {pname} is in stages {hits}"
        counts[hits[0]] = counts.get(hits[0], 0) + 1
    assert sorted(counts) == list(range(len(m.spec.stages)))
    assert stage_of(m.spec, "no.such.module") is None
    assert isinstance(m.cam_target_layer(), nn.Module)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_gradcam_layer_gives_a_readable_map_at_the_demo_size(name: str) -> None:
    """At least 12 x 12 cells at 96 px (the demo), a deeper layer at larger inputs."""
    m = build_model(name, "regression").eval()
    got = {}
    layer = m.cam_target_layer(image_size=96)
    assert layer is m.cam_target_layer()  # the default is the demo size's layer
    h = layer.register_forward_hook(lambda mod, i, o: got.__setitem__("hw", tuple(o.shape[-2:])))
    with torch.no_grad():
        m(torch.rand(1, 1, 96, 96))
    h.remove()
    assert got["hw"][0] >= 12 and got["hw"][1] >= 12 and m.spec.cam_map_size(96) == got["hw"][0]
    deep = m.spec.family.cam_layers[0][0]
    assert m.spec.cam_layer_for(96 * 32) == deep  # large inputs: the last block


def test_unknown_backbone_lists_the_choices() -> None:
    with pytest.raises(BadConfigError, match="resnet50"):
        build_model("resnet9000", "regression")


def test_greyscale_stem_is_imagenet_normalised_three_channels() -> None:
    m = build_model("resnet18", "regression").eval()
    x = torch.rand(2, 1, 48, 48)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (x.repeat(1, 3, 1, 1) - mean) / std
    assert torch.allclose(m.stem(x), expected)
    with torch.no_grad():
        assert torch.allclose(m.features(x), m.backbone(expected), atol=1e-5)


def test_regression_outputs_live_on_the_score_scale() -> None:
    torch.manual_seed(0)
    m = build_model(
        "mobilenet_v2_050", "regression", extra_heads=True, target_transform="log1p", max_score=140
    ).eval()
    m.set_target_stats([1.5, 1.0], [0.7, 0.5])
    y = torch.tensor([[0.0, 3.0], [12.0, 40.0], [80.0, 60.0]])  # erosion, jsn
    assert torch.allclose(m.decode(m.encode_target(y))[:, 1:], y, atol=1e-3)
    with torch.no_grad():
        out = m(torch.rand(4, 1, 48, 48))
    assert out.shape == (4, 3)
    assert torch.allclose(out[:, 0], out[:, 1] + out[:, 2])  # total = erosion + jsn
    assert (out >= 0).all() and (out[:, 0] <= 140).all()


@settings(max_examples=200, deadline=None)
@given(
    raw=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 6), st.just(2)),
        elements=st.floats(-1e3, 1e3, width=32, allow_nan=False),
    ),
    transform=st.sampled_from(["none", "log1p"]),
    scope_max=st.sampled_from([140.0, 280.0]),
    shift=st.floats(-5, 60),
    scale=st.floats(0.05, 50),
)
def test_sub_scores_never_exceed_their_maxima_and_sum_to_the_total(
    raw: np.ndarray, transform: str, scope_max: float, shift: float, scale: float
) -> None:
    """Whatever the head outputs: 0 <= erosion <= 80, 0 <= JSN <= 60 per hand (160 and 120
    per patient), total = erosion + JSN <= 140 (280)."""
    m = _CAPPED[(transform, scope_max)]
    m.set_target_stats([shift, shift / 2], [scale, scale / 3])
    out = m.decode(torch.from_numpy(raw)).double()
    total, ero, jsn = out[:, 0], out[:, 1], out[:, 2]
    assert torch.isfinite(out).all() and (out >= 0).all()
    assert (ero <= scope_max * 80 / 140 + 1e-6).all() and (jsn <= scope_max * 60 / 140 + 1e-6).all()
    assert torch.allclose(total, ero + jsn, atol=1e-4) and (total <= scope_max + 1e-6).all()
    got = predict_outputs("regression", out, HAND if scope_max == 140 else PATIENT)
    np.testing.assert_allclose(got["score"], got["erosion"] + got["jsn"], atol=1e-4)


_CAPPED = {
    (t, hi): build_model(
        "mobilenet_v2_050", "regression", extra_heads=True, target_transform=t, max_score=hi
    )
    for t in ("none", "log1p")
    for hi in (140.0, 280.0)
}


def test_predict_outputs_per_task() -> None:
    reg = predict_outputs("regression", torch.tensor([[0.0, 0.0, 0.0], [30.0, 20.0, 10.0]]), HAND)
    assert reg["severity_class"].tolist() == [0, HAND.to_class(30.0)]
    assert np.allclose(reg["probs"].sum(1), 1) and reg["probs"][1, HAND.to_class(30.0)] == 1
    assert reg["erosion"].tolist() == [0, 20] and reg["jsn"].tolist() == [0, 10]

    logits = torch.randn(5, HAND.n_classes)
    cls = predict_outputs("classification", logits, HAND)
    assert np.allclose(cls["probs"], torch.softmax(logits, 1).numpy(), atol=1e-6)
    assert (cls["severity_class"] == logits.argmax(1).numpy()).all()
    assert np.allclose(cls["score"], cls["probs"] @ HAND.representative_scores)

    cor = torch.tensor([[4.0, 3.0, 1.0, -1.0, -3.0, -5.0], [-5.0] * 6])
    o = predict_outputs("ordinal", cor, HAND)
    assert o["severity_class"].tolist() == [3, 0]  # number of P(y > k) above 0.5
    assert np.allclose(o["probs"].sum(1), 1) and (o["probs"] >= 0).all()
    sig = 1 / (1 + np.exp(-cor.numpy()[0]))
    assert np.isclose(o["probs"][0, 0], 1 - sig[0]) and np.isclose(o["probs"][0, -1], sig[-1])

    ba = predict_outputs("boneage", torch.tensor([[120.0], [30.5]]), None)
    assert ba["score"].tolist() == [120.0, 30.5] and ba["severity_class"] is None


def test_ordinal_probs_never_negative_for_unordered_logits() -> None:
    p = ordinal_probs(np.array([[-1.0, 2.0, 0.0]]))  # P(y>1) > P(y>0): inconsistent
    assert (p >= 0).all() and np.isclose(p.sum(), 1)


def test_average_raw_averages_probabilities() -> None:
    a, b = torch.randn(3, 7), torch.randn(3, 7)
    avg = average_raw("classification", [a, b])
    want = (torch.softmax(a, 1) + torch.softmax(b, 1)).numpy() / 2
    assert np.allclose(predict_outputs("classification", avg, HAND)["probs"], want, atol=1e-6)
    c, d = torch.randn(3, 6), torch.randn(3, 6)
    cum = 1 / (1 + np.exp(-average_raw("ordinal", [c, d])))
    assert np.allclose(cum, (torch.sigmoid(c) + torch.sigmoid(d)).numpy() / 2, atol=1e-6)
    assert np.allclose(average_raw("regression", [np.ones((2, 1)), 3 * np.ones((2, 1))]), 2)


def test_coral_loss_matches_its_definition() -> None:
    logits = torch.tensor([[2.0, 0.0, -2.0], [0.5, -0.5, -1.0]])
    labels = torch.tensor([2, 0])
    levels = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    manual = (
        -(
            levels * torch.nn.functional.logsigmoid(logits)
            + (1 - levels) * torch.nn.functional.logsigmoid(-logits)
        )
        .sum(1)
        .mean()
    )
    assert torch.isclose(OrdinalLoss(4)(logits, labels), manual)


def test_class_weights_and_loss_choices() -> None:
    w = class_weights_from_labels([0, 0, 0, 1], 3)
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2, 1.0]))  # absent class -> 1
    ce = make_loss("classification", n_classes=3, class_weights=w, label_smoothing=0.1)
    assert isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    assert isinstance(make_loss("regression", "huber"), nn.HuberLoss)
    with pytest.raises(BadConfigError, match="does not fit"):
        make_loss("regression", "coral")


def test_schemes_choose_stages_and_learning_rates() -> None:
    assert Scheme.parse("partial:2").trainable_stages(5) == {3, 4}
    assert Scheme.parse("head").trainable_stages(5) == set()
    assert Scheme.parse("full").trainable_stages(5) == set(range(5))
    g = Scheme.parse("gradual")
    assert [len(g.trainable_stages(5, e, 2)) for e in range(0, 14, 2)] == [0, 1, 2, 3, 4, 5, 5]
    assert g.trainable_stages(5, 4, 2) == {3, 4}  # top stages first
    f = Scheme.parse("discriminative").stage_lr_factors(4, 0.5)
    assert f == [0.0625, 0.125, 0.25, 0.5]
    for bad in ("partial:x", "partial:-1", "sideways"):
        with pytest.raises(BadConfigError):
            Scheme.parse(bad)


def test_param_groups_cover_every_parameter_once() -> None:
    m = build_model("resnet18", "classification")
    groups = param_groups(m, Scheme.parse("discriminative"), lr=1e-3, lr_decay=0.5)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(m.parameters()))
    lrs = {g["name"]: g["lr"] for g in groups}
    assert (
        lrs["head"] == 1e-3 and lrs["stage4"] == 5e-4 and lrs["stage0"] == pytest.approx(1e-3 / 32)
    )


def test_frozen_stages_get_no_gradient_and_keep_batchnorm_statistics() -> None:
    torch.manual_seed(0)
    m = build_model("resnet18", "regression")
    trainable = apply_scheme(m, Scheme.parse("partial:1"))
    assert trainable == {4}
    stages, head = stage_parameters(m)
    m.train()
    assert hold_frozen_batchnorm(m) > 0
    before = m.backbone.layer1[0].bn1.running_mean.clone()
    m.forward_raw(torch.rand(4, 1, 48, 48)).sum().backward()
    assert all(p.grad is None for s in stages[:4] for p in s)
    assert all(p.grad is not None for p in stages[4] + head)
    assert torch.equal(m.backbone.layer1[0].bn1.running_mean, before)
    assert m.backbone.layer4[0].bn1.training  # trainable stage's BN still learns


def test_imagenet_offline_error_says_where_to_put_the_weights(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("SVDH_OFFLINE", "1")
    url, path = imagenet_cache_path(BACKBONES["resnet18"])
    assert path.parent == tmp_path / "hub" / "checkpoints"
    with pytest.raises(WeightsUnavailableError) as exc:
        build_model("resnet18", "regression", init="imagenet")
    assert str(path) in str(exc.value) and url in str(exc.value)


def test_imagenet_download_failure_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("SVDH_OFFLINE", raising=False)

    def no_network(url, dst, progress=True):  # what urllib raises without a route
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(
        WeightsUnavailableError, match="could not be downloaded.*network unreachable"
    ):
        build_model("resnet18", "regression", init="imagenet")
    assert not any(tmp_path.rglob("*.pth"))  # no half-written file left behind


def test_imagenet_weights_come_from_the_torch_cache(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("SVDH_OFFLINE", "1")
    torch.manual_seed(123)
    ref = torchvision.models.resnet18()
    _, path = imagenet_cache_path(BACKBONES["resnet18"])
    path.parent.mkdir(parents=True)
    torch.save(ref.state_dict(), path)
    m = build_model("resnet18", "regression", init="imagenet")
    assert torch.equal(m.backbone.conv1.weight, ref.conv1.weight)
    assert torch.equal(m.backbone.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)


def test_checkpoint_init_transfers_backbone_and_fitting_head(tmp_path) -> None:
    from svdh.models.weights import save_weights

    torch.manual_seed(1)
    src = build_model("mobilenet_v2_050", "boneage", use_sex=True)
    src.set_target_stats([100.0], [40.0])
    f = tmp_path / "best.safetensors"
    save_weights(f, src.state_dict(), src.config)

    reg = build_model("mobilenet_v2_050", "regression", init=f"checkpoint:{f}")
    assert torch.equal(reg.backbone.features[0][0].weight, src.backbone.features[0][0].weight)
    assert reg.init_report == {
        "backbone_tensors": len([k for k in src.state_dict() if k.startswith("backbone.")]),
        "head_transferred": False,
    }
    assert float(reg.out_shift) == 0.0  # fresh head, fresh standardisation

    same = build_model("mobilenet_v2_050", "boneage", init=f"checkpoint:{f}", use_sex=True)
    assert same.init_report["head_transferred"]
    assert torch.equal(same.head.out.weight, src.head.out.weight) and float(same.out_shift) == 100.0

    with pytest.raises(BadConfigError, match="holds a mobilenet_v2_050"):
        build_model("resnet18", "regression", init=f"checkpoint:{f}")
    with pytest.raises(BadConfigError, match="does not exist"):
        build_model("resnet18", "regression", init=f"checkpoint:{tmp_path / 'nope.ckpt'}")

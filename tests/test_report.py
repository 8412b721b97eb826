"""Plots, the self-contained HTML report, `svdh report` / `svdh compare`, and the report in Chromium."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from run_factory import cohort, make_run
from svdh.evaluate.ensemble import build_ensemble
from svdh.evaluate.metrics import evaluate_run
from svdh.evaluate.report.html import PHANTOM_NOTE, build_report
from svdh.evaluate.report.plots import write_plots
from svdh.runs.tables import read_run

CHROMIUM = Path("/usr/bin/chromium")
LOCALISATION = {
    "n_images": 12,
    "mass_on_damaged": 0.41,
    "pointing_game": 0.75,
    "random_mass": 0.08,
    "random_pointing": 0.08,
    "random_hand_mass": 0.19,
    "random_hand_pointing": 0.19,
}


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.imgs: list[dict[str, str]] = []
        self.links: list[str] = []
        self.tags: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if tag == "img":
            self.imgs.append(a)
        for key in ("href", "src"):
            if a.get(key) and tag != "img":
                self.links.append(a[key])


def _parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    return p


def _png(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _hand_png(path: Path, seed: int) -> Path:
    """A small radiograph-like image: a bright hand-shaped blob with fingers on a dark field."""
    rng = np.random.default_rng(seed)
    img = np.full((200, 160), 20, np.uint8)
    img[110:180, 40:120] = 170  # palm
    for i, x in enumerate(range(45, 120, 18)):
        img[30 + 5 * i : 110, x : x + 10] = 190  # fingers
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def runs(tmp_path):
    base = cohort(40, seed=0, reader2=True)
    a = make_run(
        tmp_path / "resnet_reg",
        base,
        noise=6,
        seed=1,
        extra_config={"data_kind": "phantom", "source": "ra2-dream:/data/phantoms"},
    )
    b = make_run(
        tmp_path / "mnet_ord",
        base,
        task="ordinal",
        noise=6,
        seed=2,
        backbone="mobilenet_v2",
        init="checkpoint:boneage/best.ckpt",
        scheme="gradual",
    )
    e = build_ensemble([a, b], tmp_path / "ens", n_boot=0)
    (e / "localisation.json").write_text(json.dumps(LOCALISATION))
    (e / "cam_gallery").mkdir()
    for i in range(3):
        Image.fromarray((np.random.default_rng(i).random((64, 64, 3)) * 255).astype(np.uint8)).save(
            e / "cam_gallery" / f"P00{i}-LH_cam.png"
        )
    return tmp_path, a, b, e


def test_plots_are_valid_pngs(runs, tmp_path):
    _, a, b, e = runs
    for run_dir, expect in (
        (a, {"confusion", "coverage", "patient_pred_vs_true"}),
        (b, {"confusion"}),
    ):
        run = read_run(run_dir)
        plots = write_plots(run, evaluate_run(run, n_boot=0), tmp_path / "plots" / run.name)
        assert expect <= set(plots)
        for p in plots.values():
            with Image.open(p) as im:
                assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 350
                assert np.asarray(im.convert("L")).std() > 5  # something is drawn
    age = make_run(
        tmp_path / "age", cohort(20).assign(y_true=lambda d: d["y_true"] + 60), task="boneage"
    )
    run = read_run(age)
    plots = write_plots(run, evaluate_run(run, n_boot=0), tmp_path / "plots" / "age")
    # no classes for bone age; errors by band of true age instead
    assert set(plots) == {"pred_vs_true", "bland_altman", "error_by_age"}


def test_report_is_self_contained_and_complete(runs):
    tmp, a, b, e = runs
    out = build_report([a, b, e], tmp / "report.html", n_boot=100, n_worst=5)
    html = out.read_text()
    doc = _parse(html)
    assert "script" not in doc.tags
    assert all(link.startswith(("data:", "#")) for link in doc.links), doc.links
    assert doc.imgs and all(i["src"].startswith("data:image/png;base64,") for i in doc.imgs)
    for i in doc.imgs:
        assert _png(i["src"].split(",", 1)[1]).format == "PNG"
    assert "http://" not in html and "https://" not in html
    assert PHANTOM_NOTE.split(":")[0] in html and "not a clinical validation" in html
    # comparison table: one row per run with its backbone, initialisation and scheme
    for text in (
        "resnet_reg",
        "mnet_ord",
        "ens",
        "mobilenet_v2",
        "checkpoint:boneage/best.ckpt",
        "gradual",
        "stacking ensemble",
    ):
        assert text in html
    m = read_run(a).metrics  # fabricated runs carry only a note; figures come from oof.csv
    assert "note" in m["overall"]
    pcc = evaluate_run(read_run(a), n_boot=0)["pcc"]
    assert f"{pcc:.3f}" in html
    # localisation and the Grad-CAM gallery of the ensemble
    assert "0.410" in html and "0.080" in html and "Pointing game" in html
    assert sum("Grad-CAM" in i.get("alt", "") for i in doc.imgs) == 3
    # worst cases: images are not readable here, so rows without thumbnails
    assert html.count("image not readable here") == 3 * 5
    assert "Second reader" in html and "Per patient" in html


def test_report_without_phantoms_has_no_phantom_note(tmp_path):
    base = cohort(20, seed=3)
    a = make_run(tmp_path / "a", base, seed=1)
    html = build_report([a], tmp_path / "r.html", n_boot=0, n_worst=2).read_text()
    assert "not a clinical validation" not in html


def test_worst_cases_show_preprocessed_thumbnails(tmp_path):
    pytest.importorskip("svdh.core.io")
    pytest.importorskip("svdh.core.preprocess")
    base = cohort(6, n_folds=3, seed=4)
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    base["image"] = [
        str(_hand_png(img_dir / f"{i}.png", k)) for k, i in enumerate(base["image_id"])
    ]
    a = make_run(tmp_path / "a", base, seed=1)
    html = build_report([a], tmp_path / "r.html", n_boot=0, n_worst=4).read_text()
    thumbs = [i for i in _parse(html).imgs if i.get("alt", "").startswith("P00")]
    assert len(thumbs) == 4
    im = _png(thumbs[0]["src"].split(",", 1)[1])
    assert im.size == (64, 64)  # the run's image_size: what the model saw


@pytest.mark.real_data
def test_report_thumbnails_of_real_radiographs(ra2_dream_dir, tmp_path):
    pytest.importorskip("svdh.core.preprocess")
    images = sorted(ra2_dream_dir.glob("*-?H.jpg"))
    assert len(images) == 6
    base = cohort(3, n_folds=3, seed=0)
    base["image"] = [
        str(ra2_dream_dir / f"UAB00{int(p[1:]) + 1}-{s}H.jpg")
        for p, s in zip(base["patient_id"], base["side"], strict=True)
    ]
    a = make_run(tmp_path / "real", base, seed=1)
    html = build_report([a], tmp_path / "r.html", n_boot=0, n_worst=6).read_text()
    thumbs = [i for i in _parse(html).imgs if i.get("alt", "").startswith("P00")]
    assert len(thumbs) == 6
    for t in thumbs:
        arr = np.asarray(_png(t["src"].split(",", 1)[1]))
        assert arr.std() > 10  # a radiograph, not a blank square


def test_cli_report_and_compare(runs):
    from svdh.cli.main import app

    tmp, a, b, e = runs
    res = CliRunner().invoke(
        app, ["report", str(a), str(e), "--out", str(tmp / "cli.html"), "--boot", "50"]
    )
    assert res.exit_code == 0, res.output
    assert (tmp / "cli.html").stat().st_size > 50_000
    res = CliRunner().invoke(app, ["compare", str(a), str(b), str(e), "--boot", "50"])
    assert res.exit_code == 0, res.output
    for text in (
        "backbone",
        "PCC",
        "RMSE",
        "MAE",
        "accuracy",
        "resnet_reg",
        "mnet_ord",
        "mobilenet_v2",
    ):
        assert text in res.output
    res = CliRunner().invoke(app, ["compare", str(a), str(b), "--format", "json", "--boot", "0"])
    rows = json.loads(res.output)
    assert [r["name"] for r in rows] == ["resnet_reg", "mnet_ord"] and rows[1]["task"] == "ordinal"


@pytest.mark.browser
def test_report_opens_in_headless_chromium(runs):
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed (/usr/bin/chromium); .ci/run installs it")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    tmp, a, b, e = runs
    out = build_report([a, b, e], tmp / "report.html", n_boot=50, n_worst=4)
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"request failed: {req.url}"))
            page.goto(out.as_uri(), wait_until="load")
            assert page.title() == "svdh evaluation report"
            assert page.locator("#comparison tr").count() == 1 + 3
            assert page.locator("#phantom-note").is_visible()
            broken = page.evaluate(
                "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
            )
            assert broken == 0
            assert page.evaluate("document.images.length") > 15
            page.screenshot(path=str(tmp / "report.png"), full_page=True)
        finally:
            browser.close()
    assert errors == []
    assert (tmp / "report.png").stat().st_size > 10_000

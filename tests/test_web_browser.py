"""End to end in headless Chromium: upload phantom radiographs on the page, see scores and heat maps.

Debian's ``chromium`` (``/usr/bin/chromium``, installed by ``.ci/run``) driven by Playwright's
Python API; skipped with the reason where either is absent. The screenshot is a test artefact:
it is written under pytest's temporary folder (path printed) and, where the environment
variable ``SVDH_TEST_ARTEFACTS`` names a folder, copied there too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """``svdh serve``'s app on a real uvicorn server on loopback, in a thread of this process."""
    import uvicorn

    from predict_world import get_world
    from svdh.web.app import create_app

    world = get_world(tmp_path_factory.getbasetemp() / "predict_world")
    app = create_app(world.ens_bundle)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert t.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    t.join(10)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> list[Path]:
    """Both hands of one phantom patient with damage (svdh synth), as 512 px PNGs."""
    from PIL import Image

    from svdh.synth import quantize, render_hand

    out = tmp_path_factory.mktemp("phantoms")
    paths = []
    for side, name in (("L", "left-hand.png"), ("R", "right-hand.png")):
        img = render_hand(seed=7, index=5, side=side, size=512)  # a patient with erosions and JSN
        Image.fromarray(quantize(img.image)).save(out / name)
        paths.append(out / name)
    return paths


def test_upload_phantoms_see_scores_overlay_and_total(browser, server, phantoms, tmp_path_factory):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, problems = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(server + "/")
        assert "not a medical device" in page.inner_text(".notice")
        page.set_input_files("#files", [str(p) for p in phantoms])
        # the page's script lists the files with a hand choice each
        assert page.locator("#filelist select[name=side]").count() == 2
        page.locator("#filelist select[name=side]").nth(0).select_option("L")
        page.locator("#filelist select[name=side]").nth(1).select_option("R")
        page.fill("#patient_id", "PHANTOM-7-5")
        page.click("#submit")
        page.wait_for_selector("article.card", timeout=120_000)

        cards = page.locator("article.card")
        assert cards.count() == 2
        for i in range(2):
            card = cards.nth(i)
            score = card.locator('[data-field="score"]').inner_text()
            assert re.fullmatch(r"\d+\.\d", score), score
            assert re.search(
                r"90% interval \d+\.\d – \d+\.\d",
                card.locator('[data-field="interval"]').inner_text(),
            )
            assert card.locator('[data-field="erosion"]').is_visible()
            assert card.locator('[data-field="severity"]').is_visible()
            # the canonical hand the model scored (the film beside it has its own pair)
            cam, plain = card.locator(".hand img.cam"), card.locator(".hand img.img")
            assert card.locator("figure.film img.cam").is_visible()
            # the overlay is shown, decoded (a real image), and the toggle swaps it for the plain image
            assert cam.is_visible() and not plain.is_visible()
            assert cam.evaluate("img => img.complete && img.naturalWidth") >= 256
            card.locator("label", has_text="Plain image").click()
            assert plain.is_visible() and not cam.is_visible()
            assert plain.evaluate("img => img.complete && img.naturalWidth") >= 256
            if i == 1:  # leave the first card on its heat map for the screenshot
                card.locator("label", has_text="Heat map").click()
                assert cam.is_visible()
        cards.nth(0).locator("label", has_text="Heat map").click()

        total = page.locator('[data-field="patient-total"]')
        assert total.count() == 1 and re.fullmatch(r"\d+\.\d", total.inner_text())
        assert "PHANTOM-7-5" in page.inner_text("article.patient")
        shot = tmp_path_factory.mktemp("artefacts") / "web_screenshot.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        print(f"screenshot: {shot}")
        if os.environ.get("SVDH_TEST_ARTEFACTS"):
            dest = Path(os.environ["SVDH_TEST_ARTEFACTS"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, dest / shot.name)
    finally:
        page.close()
    # works offline: nothing was requested from anywhere but this server (data URLs aside)
    assert all(u.startswith(server) or u.startswith("data:") for u in requests), requests
    assert problems == []


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[Path]:
    """A both-hands phantom film (the clinic layout) and a right hand turned a quarter, as PNGs."""
    import numpy as np
    from PIL import Image

    from svdh.synth import quantize, render_hand

    out = tmp_path_factory.mktemp("films")
    both = render_hand(seed=7, index=5, side="B", size=512)
    right = render_hand(seed=7, index=6, side="R", size=512)
    Image.fromarray(quantize(both.image)).save(out / "P7-BH.png")
    Image.fromarray(np.ascontiguousarray(np.rot90(quantize(right.image)))).save(out / "P8-RH.png")
    return [out / "P7-BH.png", out / "P8-RH.png"]


def _right_of(a: dict, b: dict) -> bool:
    """Box ``b`` lies right of box ``a`` on the same row (Playwright bounding boxes)."""
    same_row = a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"]
    return same_row and b["x"] >= a["x"] + a["width"] - 1


def test_both_hands_film_is_shown_beside_its_canonical_hands(
    browser, server, films, tmp_path_factory
):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(server + "/")
        page.set_input_files("#files", [str(p) for p in films])
        page.click("#submit")
        page.wait_for_selector("article.card", timeout=120_000)
        card = page.locator('article.card[data-image="P7-BH.png"]')
        assert card.get_attribute("data-hands") == "2"
        film = card.locator("figure.film img.cam")
        assert film.is_visible() and film.evaluate("i => i.complete && i.naturalWidth") >= 384
        assert "2 hands found" in card.locator("figure.film figcaption").inner_text()
        hands = card.locator(".hand-col")
        assert hands.count() == 2
        boxes = [film.bounding_box()]
        for j, side in enumerate(("Right hand", "Left hand")):
            hand = hands.nth(j)
            img = hand.locator("figure.hand img.cam")
            assert img.is_visible() and img.evaluate("i => i.complete && i.naturalWidth") >= 256
            # its decision under it, then its score
            caption = hand.locator("figure.hand figcaption").inner_text()
            assert side in caption and "side from position" in caption, caption
            assert (
                hand.locator('[data-field="decision"]')
                .inner_text()
                .startswith(f"hand {j + 1}/2, rot ")
            )
            assert re.fullmatch(r"\d+\.\d", hand.locator('[data-field="score"]').inner_text())
            boxes.append(img.bounding_box())
        # film, hand 1, hand 2 side by side, left to right
        assert _right_of(boxes[0], boxes[1]) and _right_of(boxes[1], boxes[2]), boxes
        # one toggle swaps the film and both hands to the plain images
        card.locator("label", has_text="Plain image").click()
        assert card.locator("img.cam").evaluate_all("e => e.every(i => !i.offsetParent)")
        assert card.locator("img.img").evaluate_all("e => e.every(i => !!i.offsetParent)")
        card.locator("label", has_text="Heat map").click()
        # the turned single hand: one canonical hand beside its film
        other = page.locator('article.card[data-image="P8-RH.png"]')
        assert other.get_attribute("data-hands") == "1"
        assert other.locator("figure.film img.cam").is_visible()
        assert other.locator(".hand-col").count() == 1
        # the film's patient gets its hands-and-wrists total
        assert "P7" in page.inner_text("article.patient")
        shot = tmp_path_factory.mktemp("artefacts") / "web_both_hands.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
        if os.environ.get("SVDH_TEST_ARTEFACTS"):
            dest = Path(os.environ["SVDH_TEST_ARTEFACTS"])
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, dest / shot.name)
    finally:
        page.close()
    assert problems == []


def test_model_card_and_api_docs_pages(browser, server):
    page = browser.new_page()
    try:
        page.goto(server + "/model")
        assert page.locator("h1").inner_text().startswith("Model card")
        assert page.locator("text=Training data").count() >= 1
        page.click("text=API")
        page.wait_for_url(server + "/docs")
        assert "/api/v1/score" in page.inner_text("main")
    finally:
        page.close()

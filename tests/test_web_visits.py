"""The web page and API with visits: a patient's visits side by side with the change between
them (its interval and the progression call, where the bundle carries a change calibration)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # the shared world trains two small runs once per session


@pytest.fixture(scope="module")
def visit_films(tmp_path_factory) -> Path:
    from svdh.synth.visits import generate_visits

    out = tmp_path_factory.mktemp("webvisits") / "c"
    generate_visits(out, 1, visits=2, size=96, seed=8, progression_rate=30.0)
    return out


def _client(bundle):
    from fastapi.testclient import TestClient

    from svdh.inference.predictor import Predictor
    from svdh.web.app import create_app

    return TestClient(create_app(Predictor(bundle)))


def _files(folder: Path, names: list[str]) -> list:
    return [("files", (n, (folder / n).read_bytes(), "image/png")) for n in names]


NAMES = ["SYN00001-V1-LH.png", "SYN00001-V1-RH.png", "SYN00001-V2-LH.png", "SYN00001-V2-RH.png"]


def test_api_gives_the_change_between_visits(world, visit_films: Path) -> None:
    with _client(world.run_bundle) as c:
        r = c.post("/api/v1/score", files=_files(visit_films, NAMES))
        assert r.status_code == 200, r.text
        doc = r.json()
        by = {(i["visit"], i["side"]): i["score"] for i in doc["results"]}
        (g,) = doc["visits"]
        assert g["patient_id"] == "SYN00001" and [v["visit"] for v in g["visits"]] == ["1", "2"]
        (ch,) = g["changes"]
        want = by[("2", "L")] + by[("2", "R")] - by[("1", "L")] - by[("1", "R")]
        assert ch["change"] == pytest.approx(want, abs=0.02)
        assert ch["progression"] == (ch["change"] > 5.0)
        assert {(p["visit"], p["total"] is not None) for p in doc["patients"]} == {
            ("1", True),
            ("2", True),
        }
        # the form's visit fields win over file names: here they name dates
        dates = ["2020-01-01", "2020-01-01", "2021-01-05", "2021-01-05"]
        r = c.post(
            "/api/v1/score",
            files=_files(visit_films, NAMES),
            data={"visit": dates},
        )
        (g,) = r.json()["visits"]
        assert g["changes"][0]["visit_to"] == "2021-01-05"
        assert g["changes"][0]["years"] == pytest.approx(370 / 365.25, abs=1e-3)


def test_page_shows_the_visits_side_by_side(world, visit_films: Path, tmp_path: Path) -> None:
    with _client(world.run_bundle) as c:
        r = c.post("/score", files=_files(visit_films, NAMES))
    assert r.status_code == 200
    html = r.text
    (tmp_path / "page.html").write_text(html)
    block = html[html.index('<article class="visits"') :]
    block = block[: block.index("</article>")]
    assert block.count('<figure class="visit"') == 2 and block.count("<img ") == 4
    assert 'data-field="change"' in block
    assert "Progression" in block or "No progression" in block

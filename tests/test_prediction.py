"""The one Prediction type and the one hands rule, without a model."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest

from svdh.core import hands
from svdh.core.errors import BadDatasetError
from svdh.core.scoring import SeverityBins
from svdh.evaluate.metrics import patient_table
from svdh.inference.prediction import Prediction


def _pred(**kw):
    base = dict(
        image="a/P1-LH.png",
        patient_id="P1",
        side="L",
        score=12.34567,
        interval=[5.0, 20.0],
        severity_class=3,
        severity_label="10-19",
        probs=[0.1, 0.2, 0.7],
        erosion=8.0,
        jsn=4.34567,
        member_spread=1.5,
        member_scores={"reg": 12.0, "ord": float("nan")},
        warnings=["low resolution", "models disagree"],
        model="ens",
        model_version="0123456789ab",
        cam=np.zeros((8, 8), np.float32),
    )
    base.update(kw)
    return Prediction(**base)


def test_row_json_and_text_render_one_prediction():
    p = _pred()
    row = p.to_row(3, ["reg", "ord"])
    assert list(row) == Prediction.columns(3, ["reg", "ord"])
    assert row["score"] == 12.346 and row["interval_lo"] == 5.0 and row["p_2"] == 0.7
    assert row["member_reg"] == 12.0 and row["warnings"] == "low resolution; models disagree"
    assert (row["model"], row["model_version"], row["error"], row["cam"]) == (
        "ens",
        "0123456789ab",
        "",
        "",
    )
    js = p.to_json()
    assert js["probabilities"] == [0.1, 0.2, 0.7] and "probs" not in js and "cam" not in js
    assert js["member_scores"] == {"reg": 12.0, "ord": None}  # non-finite -> null
    assert js["model"] == "ens" and js["model_version"] == "0123456789ab"
    assert "score 12.3 [5.0, 20.0]" in p.to_text() and "WARNING" in p.to_text()
    # the mapping-style reads of the predictor contract
    assert p["score"] == p.score and p.get("absent", 7) == 7 and {"cam", "display"} <= set(p)
    with pytest.raises(KeyError):
        p["absent"]


def test_an_error_prediction_has_empty_scores_in_every_rendering():
    e = Prediction.failed("x.png", "x.png: not an image", model="ens")
    row = e.to_row(2, ["m"])
    assert row["error"] == "x.png: not an image" and row["score"] == "" and row["p_1"] == ""
    assert row["model"] == "ens"
    js = e.to_json()
    assert js["score"] is None and js["interval"] is None and js["warnings"] == []
    assert e.to_text() == "x.png: ERROR x.png: not an image"


def test_a_new_field_is_one_declaration():
    """Every non-array field of the dataclass is rendered in the row, the JSON and the schema."""
    keys = {k for k, *_ in Prediction.json_fields("svdh")}
    assert keys == set(_pred().to_json())
    for f in dataclasses.fields(Prediction):
        if f.metadata["kind"] == "value":
            family = f.metadata["only"] or "svdh"
            assert (f.metadata["column"] or f.name) in Prediction.columns(2, ["m"], family)


def test_the_web_response_model_is_derived_from_prediction():
    from svdh.web.schema import ImageScore

    js = _pred().to_json()
    ImageScore.model_validate(js)
    assert set(js) <= set(ImageScore.model_fields)
    assert ImageScore.model_fields["score"].description.startswith("predicted SvdH total")


# --------------------------------------------------------------------------- hands


def test_side_normalisation():
    assert [hands.norm_side(s) for s in ("L", "left", "lh", " R ", "RIGHT", "both", "")] == [
        "L",
        "L",
        "L",
        "R",
        "R",
        "both",
        None,
    ]
    with pytest.raises(BadDatasetError, match="row 3.*not L or R"):
        hands.norm_side("up", "row 3")
    assert hands.side_or_none("up") is None and hands.side_or_none(None) is None


def test_patient_table_and_patient_totals_follow_one_rule():
    df = pd.DataFrame(
        {
            "patient_id": ["a", "a", "b", "c", "c", "d", "d"],
            "side": ["left", "R", "L", "L", "L", "L", "both"],
            "y_true": [1.0, 2, 5, 10, 20, 1, 1],
            "y_pred": [1.5, 2.5, 4, 12, 18, 1, 1],
        }
    )
    pt = patient_table(df).set_index("patient_id")
    totals = hands.PatientTotals(SeverityBins.hand())
    for r in df.itertuples():
        totals.add(
            {
                "image": str(r.Index),
                "patient_id": r.patient_id,
                "side": hands.side_or_none(r.side),
                "score": r.y_pred,
            }
        )
    with_total = {t["patient_id"]: t["total"] for t in totals.totals() if t["total"] is not None}
    assert list(pt.index) == sorted(with_total) == ["a"]
    assert pt.loc["a", "y_pred"] == with_total["a"] == 4.0
    assert hands.sum_hands([1.0, None]) is None and math.isnan(
        patient_table(df.assign(y_true=[1.0, np.nan, 5, 10, 20, 1, 1]))["y_true"].iloc[0]
    )

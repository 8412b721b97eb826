import numpy as np
import pytest

from svdh.core import scoring
from svdh.core.errors import BadConfigError, BadDatasetError
from svdh.core.scoring import SeverityBins


def test_catalogue_sizes_and_maxima():
    assert len(scoring.EROSION_JOINTS) == 16
    assert len(scoring.JSN_JOINTS) == 15
    assert scoring.MAX_EROSION_HAND == 80
    assert scoring.MAX_JSN_HAND == 60
    assert scoring.MAX_PATIENT == 280
    assert len({j.key for j in scoring.JOINTS}) == 31
    assert scoring.JOINTS_BY_KEY["jsn_radcar"].column("R") == "RH_wrist_J__radcar"
    assert scoring.JOINTS_BY_KEY["ero_mcp2"].column("l") == "LH_mcp_E__2"


def _row(value=0):
    return {c: value for side in "LR" for c in scoring.joint_columns(side)}


def test_hand_and_patient_totals():
    row = _row(0)
    row["LH_mcp_E__2"] = 3
    row["LH_wrist_J__radcar"] = 4
    row["RH_pip_J__5"] = 1
    left = scoring.hand_score(row, "L")
    assert (left.erosion, left.jsn, left.total) == (3, 4, 7)
    assert scoring.patient_score(row).total == 8
    full = scoring.patient_score({c: (5 if "_E_" in c else 4) for c in row})
    assert full.total == 280


@pytest.mark.parametrize(
    "col,value,needle",
    [
        ("LH_mcp_E__2", 6, "out of range 0-5"),
        ("RH_pip_J__3", 5, "out of range 0-4"),
        ("LH_mcp_E__ip", float("nan"), "missing"),
        ("RH_wrist_E__ulna", "x", "not a number"),
    ],
)
def test_bad_joint_scores_name_joint_and_row(col, value, needle):
    row = _row(0)
    row[col] = value
    with pytest.raises(BadDatasetError, match=needle) as e:
        scoring.patient_score(row, row_id="UAB007")
    assert col in str(e.value) and "UAB007" in str(e.value)


def test_missing_joint_column():
    row = _row(0)
    del row["RH_wrist_J__cmc4"]
    with pytest.raises(BadDatasetError, match="RH_wrist_J__cmc4"):
        scoring.patient_score(row, row_id="3")


def test_default_patient_bins():
    b = SeverityBins.patient()
    assert b.labels == ("0", "1-4", "5-9", "10-19", "20-39", "40-79", "80-280")
    scores = [0, 1, 4, 5, 9, 10, 19, 20, 39, 40, 79, 80, 280]
    assert list(b.to_class(scores)) == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    # continuous predictions bin as if rounded; out-of-range predictions are clipped
    assert list(b.to_class([0.4, 0.6, 4.4, 4.6, -3, 500])) == [0, 1, 1, 2, 0, 6]
    assert b.to_class(39) == 4


def test_hand_bins_are_patient_edges_halved():
    h = SeverityBins.hand()
    assert h.n_classes == 7 and h.max_score == 140
    assert h.labels == ("0", "1-2", "3-4", "5-9", "10-19", "20-39", "40-140")
    assert list(h.to_class([0, 1, 2, 3, 4, 5, 9, 10, 19, 20, 39, 40])) == [
        0,
        1,
        1,
        2,
        2,
        3,
        3,
        4,
        4,
        5,
        5,
        6,
    ]


def test_bins_round_trip_and_expected_score():
    b = SeverityBins.patient([2, 10, 50])
    assert b.n_classes == 4
    assert SeverityBins.from_dict(b.to_dict()) == b
    probs = np.eye(4)
    assert np.allclose(b.expected_score(probs), b.representative_scores)


@pytest.mark.parametrize("edges", [[5, 5, 10], [0, 4], [10, 5], [1, 300]])
def test_bad_bins(edges):
    with pytest.raises(BadConfigError):
        SeverityBins.patient(edges)

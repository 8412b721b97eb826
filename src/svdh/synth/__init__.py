"""Phantom hand radiographs with known per-joint damage (``svdh synth``).

Public API:

* :func:`generate_cohort` - write a cohort in the RA2-DREAM layout (``mode='ra'``) or the
  RSNA Bone Age layout (``mode='child'``), with ``landmarks.json``.
* :func:`render_hand` - one radiograph in memory (float image, landmarks, scores), e.g. the
  same hand with and without damage at one joint.
* :func:`make_patient` / :func:`render_patient` - the two steps of :func:`render_hand`.
* :func:`make_sheet` - a contact sheet of a cohort.
* :func:`load_landmarks` - read and check a cohort's ``landmarks.json``.

See ``docs/synth.md`` for the model and the file formats.
"""

from svdh.synth.cohort import (
    CohortOptions,
    CohortSummary,
    generate_cohort,
    load_landmarks,
    ra_columns,
)
from svdh.synth.damage import PatientDisease, no_damage, parse_severity
from svdh.synth.phantom import (
    MODES,
    Patient,
    RenderedImage,
    make_patient,
    quantize,
    render_hand,
    render_patient,
)
from svdh.synth.sheet import make_sheet

__all__ = [
    "MODES",
    "CohortOptions",
    "CohortSummary",
    "Patient",
    "PatientDisease",
    "RenderedImage",
    "generate_cohort",
    "load_landmarks",
    "make_patient",
    "make_sheet",
    "no_damage",
    "parse_severity",
    "quantize",
    "ra_columns",
    "render_hand",
    "render_patient",
]

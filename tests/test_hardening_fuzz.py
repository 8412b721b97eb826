"""Issue 14 item 12: the readers' contract under mutation (hypothesis, a fixed budget).

Real radiographs (../shared/data, where present) and phantom files of every format (PNG 8/16,
JPEG, BMP, TIFF 8/16/float/LZW, DICOM native, MONOCHROME1, without preamble, RLE, JPEG 2000,
JPEG, JPEG-LS, multi-frame) are mutated byte-wise and element-wise (VR, length, value); every
mutant must give a valid radiograph or one one-line :class:`BadRadiographError` naming the
file and quoting no patient data. benchmarks/fuzz_readers.py runs the same for N cases.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_corpus import OPS, SHARED, check_contract, mutate, phantom_seeds, real_seeds

PHANTOMS = phantom_seeds()
REAL = real_seeds(limit=3) if SHARED.is_dir() else {}

mutations = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.floats(0, 1, allow_nan=False),
        st.integers(0, 2**32 - 1),
        st.integers(1, 64),
    ),
    min_size=1,
    max_size=4,
)
_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run: CI stays steady and fast
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize("name", sorted(PHANTOMS))
def test_every_seed_reads(name: str) -> None:
    assert check_contract(PHANTOMS[name], name).kind == "ok"


@settings(max_examples=250, **_SETTINGS)
@given(name=st.sampled_from(sorted(PHANTOMS)), muts=mutations)
def test_mutated_phantom_files_keep_the_reader_contract(name: str, muts: list) -> None:
    outcome = check_contract(mutate(PHANTOMS[name], muts), name)
    assert outcome.kind in ("ok", "refused"), outcome.detail


@pytest.mark.real_data
@pytest.mark.skipif(not REAL, reason="../shared/data (real radiographs) is absent")
@settings(max_examples=30, **_SETTINGS)
@given(data=st.data(), muts=mutations)
def test_mutated_real_radiographs_keep_the_reader_contract(data, muts: list) -> None:
    name = data.draw(st.sampled_from(sorted(REAL)))
    outcome = check_contract(mutate(REAL[name], muts), name)
    assert outcome.kind in ("ok", "refused"), outcome.detail

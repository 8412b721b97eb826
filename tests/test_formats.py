"""The one format sniffer (:func:`svdh.core.io.sniff_format`): files and web uploads agree.

Before the redesign the reader and the web uploads each had a sniffer, and they disagreed on a
BMP signature alone ("BM" and a few bytes) and on DICOM written without the preamble whose
first tag is not one of the usual first elements. Both cases are checked through both paths.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
from PIL import Image

from svdh.core.errors import BadRadiographError
from svdh.core.io import read_radiograph_bytes, sniff_format
from svdh.web import uploads


def _bare_dicom(pixels: np.ndarray, first: str) -> bytes:
    """A DICOM data set without preamble or file meta; ``first`` is its lowest tag's keyword."""
    ds = pydicom.Dataset()
    setattr(ds, first, "CR" if first == "Modality" else "1.2.3")
    ds.PatientID = "P1"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (pixels.astype(np.uint16) * 16).tobytes()
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
    return buf.getvalue()


def test_web_uploads_use_the_one_sniffer():
    assert uploads.sniff_format is sniff_format


@pytest.mark.parametrize("first", ["Modality", "SOPClassUID"])
def test_dicom_without_preamble_is_recognised_and_read(first):
    px = (np.arange(24 * 20).reshape(24, 20) % 200).astype(np.uint16)
    data = _bare_dicom(px, first)
    # Modality (0008,0060) was not among the reader's first tags: the reader refused it
    assert data[128:132] != b"DICM" and data[:2] == b"\x08\x00"
    assert sniff_format(data) == "dicom"
    rad = read_radiograph_bytes(data, "bare")
    assert rad.pixels.shape == (24, 20) and rad.meta.get("patient_id") == "P1"


def test_a_data_set_without_image_attributes_is_not_dicom():
    assert sniff_format(b"\x08\x00\x60\x00" + bytes(60)) is None


def test_bmp_needs_more_than_its_two_letters():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buf, format="BMP")
    assert sniff_format(buf.getvalue()) == "bmp"
    assert sniff_format(b"BM" + bytes(60)) == "bmp"
    # "BM" and a few bytes: the web refused it as not an image while the reader took it as BMP
    short = b"BMhello"
    assert sniff_format(short) is None
    with pytest.raises(BadRadiographError, match="not an image"):
        read_radiograph_bytes(short, "short.bmp")

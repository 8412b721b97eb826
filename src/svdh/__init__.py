"""svdh: score rheumatoid-arthritis joint damage (SvdH) on hand radiographs."""

__version__ = "0.1.0"

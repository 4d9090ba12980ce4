"""The record of settings kept with every output (model id, clip_len, checkpoint sha256,
precision, package version).

PLACEHOLDER: the record itself is written by another change (issue 13), which brings the real
`read_record`; until it is merged nothing is recorded, so this says so by returning None and
`hero-features inspect` prints "no record". Keep the signature when replacing it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def read_record(path: Path) -> Optional[dict]:
    """The settings recorded for the feature file `path`, or None when it has none."""
    return None

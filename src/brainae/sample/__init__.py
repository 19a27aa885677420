"""The embedded IXI sample (CC BY-SA 3.0, credit "IXI dataset"); see README.md in this folder."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent
PARTICIPANTS = SAMPLE_DIR / "participants.csv"


def sample_files() -> list[Path]:
    """The sample's NIfTI files, sorted."""
    return sorted(SAMPLE_DIR.glob("*.nii.gz"))

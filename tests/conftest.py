"""Shared pytest fixtures."""

from pathlib import Path

import pytest

REFERENCE_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture
def reference_dir() -> Path:
    """The golden fixtures produced by the original implementations (/work/shared/reference)."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"golden fixtures folder {REFERENCE_DIR} is absent")
    return REFERENCE_DIR

"""Shared test fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The read-only real data lives beside the repository: /work/main/tests -> /work/shared/data.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder with the real data at hand (collm-ml-1m.zip, raw-ml-1m-partial/); skip if absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found: {SHARED_DATA}")
    return SHARED_DATA

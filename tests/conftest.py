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


@pytest.fixture(scope="session")
def ml1m(shared_data, tmp_path_factory) -> Path:
    """The paper's ML-1M splits imported once per test session (read-only for tests)."""
    from cora.data.collm_import import import_collm

    out = tmp_path_factory.mktemp("imp") / "ml-1m"
    import_collm(shared_data / "collm-ml-1m.zip", out, trust_pickle=True)
    return out

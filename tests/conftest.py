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


# A tiny trained CoRA run and its recommender, for the tests of a trained run (serving, ranking).
# Module scope: each such module trains its own run, since some tests write into the run folder.
# Modules with a ``root`` fixture of their own (test_cora_core, ...) keep theirs.
@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("trained")


@pytest.fixture(scope="module")
def run(root):
    from cora.train.run import train_run
    from llm_fixtures import tiny_config

    out = root / "run-cora"
    train_run(tiny_config(root), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def rec(run):
    from cora.serve import Recommender

    return Recommender.from_run(run)


@pytest.fixture(scope="module")
def tables(root):
    from cora.data.store import load_dataset

    ds = load_dataset(root / "data")
    return {s: ds.split(s) for s in ("train", "valid", "test")}

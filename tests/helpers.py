"""Small builders shared by tests: synthetic interaction tables in the project's schema, the
`cora` command line in a subprocess or in this process, and the benchmark scripts as modules."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def run_cli(*args, env: dict | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``python -m cora.cli ARGS`` as a user runs it; stdout and stderr captured as text."""
    return subprocess.run([sys.executable, "-m", "cora.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def main_in_process(monkeypatch, capsys, *args, columns: int | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `cora ARGS` run in this process through cora.cli.main, the
    function the console script calls (so its one-line error handling is what is tested)."""
    from cora import cli

    monkeypatch.setattr(sys, "argv", ["cora", *map(str, args)])
    if columns:
        monkeypatch.setenv("COLUMNS", str(columns))  # rich wraps at the terminal width
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def load_benchmark(monkeypatch, name: str):
    """benchmarks/<name>.py imported as a module (the benchmarks are scripts, not a package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def synthetic_table(n_rows: int = 200, n_users: int = 12, n_items: int = 30, seed: int = 0) -> pd.DataFrame:
    """Rows whose label follows a hidden user/item affinity, so CF models can learn something."""
    rng = np.random.default_rng(seed)
    uid = rng.integers(1, n_users + 1, n_rows)
    iid = rng.integers(1, n_items + 1, n_rows)
    label = ((uid + iid) % 2 == 0).astype(int)
    his = [[0] + list(rng.integers(1, n_items + 1, rng.integers(0, 6))) for _ in range(n_rows)]
    return pd.DataFrame({
        "uid": uid, "iid": iid, "label": label, "timestamp": np.arange(n_rows) + 1_000_000,
        "his": his, "his_title": [[""] + [f"Movie {x}" for x in h[1:]] for h in his],
        "title": [f"Movie {i}" for i in iid], "not_cold": (np.arange(n_rows) % 4 != 0).astype(int),
    })


def synthetic_splits(seed: int = 0, **kw) -> dict[str, pd.DataFrame]:
    train = synthetic_table(seed=seed, **kw)
    train["not_cold"] = 1
    valid = synthetic_table(seed=seed + 1, n_rows=120, **{k: v for k, v in kw.items() if k != "n_rows"})
    test = synthetic_table(seed=seed + 2, n_rows=120, **{k: v for k, v in kw.items() if k != "n_rows"})
    return {"train": train, "valid": valid, "valid_small": valid.iloc[:60], "test": test}

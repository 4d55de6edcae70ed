"""The project as a user installs it: an sdist and a wheel from ``python -m build``, the wheel in a
fresh venv without the optional extras, and that venv's own ``cora`` (not this checkout's editable
install) running ``--help``, a tiny ``train`` + ``evaluate``, and ``serve``'s one-line hint.

Offline throughout: ``build --no-isolation`` uses this environment's setuptools, pip installs the
wheel with ``--no-deps --no-index``, and the fresh venv borrows the dependencies (torch, ...) from
this environment through a ``.pth`` file, minus the packages only the extras bring.
"""

from __future__ import annotations

import configparser
import email
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from llm_fixtures import tiny_config

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
VERSION = PROJECT["version"]
DIST = "cora-rec"  # `cora` on PyPI is someone else's project
STEM = f"cora_rec-{VERSION}"  # the normalised file-name form of DIST and VERSION
# What a plain install (no extras) lacks: the serve extra (starlette is fastapi's core; pydantic stays,
# typer needs it) and gguf.
EXTRA_ONLY = ("fastapi", "uvicorn", "httpx", "starlette", "gguf")
# Never copied into the tree the release is built from (when it is not a git checkout).
NOT_SOURCE = {".git", ".venv", "runs", "data", "build", "dist", "__pycache__", ".pytest_cache"}


def _env() -> dict[str, str]:
    # No PYTHONPATH: the fresh venv must find cora only in its own site-packages.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1", PIP_NO_INDEX="1",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def _run(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=_env(), timeout=timeout)


def _source_files() -> list[Path]:
    """What a release is built from: the checkout's files (tracked or new, not git-ignored), so
    .venv, runs/ and build leftovers stay out; outside git (an unpacked sdist) the tree itself."""
    if (ROOT / ".git").exists() and shutil.which("git"):
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True).stdout.decode()
        return [ROOT / p for p in out.split("\0") if p and (ROOT / p).is_file()]
    return [p for p in ROOT.rglob("*") if p.is_file() and not any(
        part in NOT_SOURCE or part.endswith(".egg-info") for part in p.relative_to(ROOT).parts)]


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("package")
    tree = tmp / "tree"  # a copy: building writes egg-info and build/ into the source tree
    for f in _source_files():
        (tree / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, tree / f.relative_to(ROOT))
    # A bytecode leftover of the kind every working tree has: the sdist must leave it out.
    (tree / "tests" / "__pycache__").mkdir(exist_ok=True)
    (tree / "tests" / "__pycache__" / "helpers.cpython-311.pyc").write_bytes(b"\0")
    res = _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", tmp / "dist", tree)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    # build's default: the wheel is built from the unpacked sdist, so the wheel tests cover the sdist.
    assert "Building wheel from sdist" in res.stdout + res.stderr
    (sdist,), (wheel,) = list((tmp / "dist").glob("*.tar.gz")), list((tmp / "dist").glob("*.whl"))
    return {"sdist": sdist, "wheel": wheel, "tree": tree}


def test_sdist_is_the_source_release(dists):
    assert dists["sdist"].name == f"{STEM}.tar.gz"
    with tarfile.open(dists["sdist"]) as tf:
        members = {m.name: m for m in tf.getmembers()}
        names = {n.removeprefix(f"{STEM}/") for n in members}
        license_text = tf.extractfile(members[f"{STEM}/LICENSE"]).read().decode()
        pkg_info = email.message_from_bytes(tf.extractfile(members[f"{STEM}/PKG-INFO"]).read())
    tree = dists["tree"]
    package = {str(p.relative_to(tree)) for p in (tree / "src" / "cora").rglob("*.py")}
    assert package and package <= names, sorted(package - names)[:5]
    assert {"pyproject.toml", "README.md", "LICENSE", "Makefile", "tests/test_package.py",
            "tests/tiny_models.py", "experiments/ml1m-table3.yaml"} <= names
    assert not [n for n in names if n.endswith(".pyc")]
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    assert "Copyright 2026 the cora authors" in license_text
    assert (pkg_info["Name"], pkg_info["Version"]) == (DIST, VERSION)


def _dist_name(req: str) -> str:
    """The distribution a requirement string names, normalised ('huggingface_hub>=0.24' -> 'huggingface-hub')."""
    return re.match(r"[A-Za-z0-9._-]+", req).group(0).lower().replace("_", "-")


def _requirements(meta) -> dict[str | None, set[str]]:
    """Requires-Dist names by the extra that brings them (None: a plain install)."""
    out: dict[str | None, set[str]] = {}
    for req in meta.get_all("Requires-Dist"):
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", req)
        out.setdefault(extra.group(1) if extra else None, set()).add(_dist_name(req))
    return out


def test_wheel_metadata(dists):
    wheel = dists["wheel"]
    assert wheel.name == f"{STEM}-py3-none-any.whl"
    info = f"{STEM}.dist-info"
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        meta = email.message_from_bytes(zf.read(f"{info}/METADATA"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{info}/entry_points.txt").decode())
        license_text = zf.read(f"{info}/licenses/LICENSE").decode()
    # The import package is `cora` and nothing else lands in site-packages.
    assert "cora/cli.py" in names and "cora/serve/app.py" in names
    assert all(n.startswith(("cora/", f"{info}/")) for n in names), [n for n in names if "cora" not in n][:5]
    assert (meta["Name"], meta["Version"], meta["Requires-Python"]) == (DIST, VERSION, ">=3.11")
    assert meta["License-Expression"] == "Apache-2.0"
    assert meta.get_all("License-File") == ["LICENSE"]
    assert license_text == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert meta["Author"] == "the cora authors"
    assert "lora" in meta["Keywords"].split(",")
    assert "Programming Language :: Python :: 3.11" in meta.get_all("Classifier")
    assert meta.get_all("Project-URL")
    assert set(meta.get_all("Provides-Extra")) == {"serve", "gguf", "test"}
    reqs = _requirements(meta)
    assert {"fastapi", "uvicorn", "httpx"} <= reqs["serve"]
    assert reqs["gguf"] == {"gguf"}
    assert {"pytest", "build", DIST} <= reqs["test"]  # the test extra pulls in serve + gguf
    assert {"torch", "transformers", "peft", "typer"} <= reqs[None]
    assert not reqs[None] & set(EXTRA_ONLY), "a plain install must not pull in the extras' packages"
    assert dict(entry_points["console_scripts"]) == {"cora": "cora.cli:main"}


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel, plus this environment's packages minus the extras'."""
    tmp = tmp_path_factory.mktemp("venv")
    env_dir = tmp / "venv"
    res = _run(sys.executable, "-m", "venv", "--without-pip", env_dir, timeout=120)
    assert res.returncode == 0, res.stderr
    py = env_dir / "bin" / "python"
    # This environment's pip installs into the new venv (--python): nothing to download, and it runs
    # before the .pth below exists, so pip sees a venv that holds nothing but the wheel.
    res = _run(sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", dists["wheel"])
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
    assert (site / "cora" / "cli.py").is_file()
    # Links to this environment's site-packages entries, less cora itself (the editable install)
    # and the extras' packages: a .pth names this folder, and Python adds a .pth line's folder to
    # sys.path after the venv's own site-packages without running the .pth files inside it.
    shared = tmp / "shared-site"
    shared.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        key = re.split(r"[-.]", entry.name)[0].lower()
        if entry.suffix == ".pth" or key.startswith(("cora", "__editable__")) or key in EXTRA_ONLY:
            continue
        (shared / entry.name).symlink_to(entry)
    (site / "zz-shared-site.pth").write_text(f"{shared}\n", encoding="utf-8")
    return env_dir


def test_installed_cora_is_the_wheel_without_extras(venv):
    probe = ("import cora, importlib.metadata as m, importlib.util as u, json; print(json.dumps({"
             "'file': cora.__file__, 'version': cora.__version__, 'dist': m.version('cora-rec'), "
             f"'absent': [n for n in {EXTRA_ONLY!r} if u.find_spec(n) is None]}}))")
    res = _run(venv / "bin" / "python", "-c", probe)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout)
    assert Path(got["file"]).resolve().is_relative_to(venv.resolve()), got["file"]
    assert got["version"] == got["dist"] == VERSION
    assert got["absent"] == list(EXTRA_ONLY)

    res = _run(venv / "bin" / "cora", "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Usage: cora" in res.stdout
    for command in ("data", "cf", "train", "evaluate", "score", "serve"):
        assert re.search(rf"^\W*{command}\b", res.stdout, re.M), command


def test_serve_without_the_extra_says_which_to_install(venv, tmp_path):
    res = _run(venv / "bin" / "cora", "serve", tmp_path / "some-run")
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert "cora serve needs fastapi and uvicorn" in lines[0] and "pip install 'cora-rec[serve]'" in lines[0]


def test_tiny_train_and_evaluate_with_the_installed_cora(venv, tmp_path):
    cfg = tiny_config(tmp_path)  # tiny dataset, MF run and random 2-layer Llama folder
    cfg.save(tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    cora = venv / "bin" / "cora"
    res = _run(cora, "train", "--config", tmp_path / "tiny.yaml", "--out", run)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run / "model.safetensors").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert max(r.get("step", 0) for r in log) == cfg.max_steps

    res = _run(cora, "evaluate", run, "--split", "test")
    assert res.returncode == 0, res.stderr[-3000:]
    n_test = len(pd.read_parquet(tmp_path / "data" / "test.parquet"))
    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert metrics["n"] == n_test and 0.0 <= metrics["auc"] <= 1.0
    scores = pd.read_parquet(run / "predictions-test.parquet")["score"]
    assert len(scores) == n_test and np.isfinite(scores).all() and scores.nunique() > 1


# Import names of declared distributions whose module is named otherwise.
IMPORT_NAMES = {"pyyaml": "yaml", "scikit-learn": "sklearn"}


def test_every_third_party_import_is_declared():
    """A module src/ imports (at top level or inside a function) that no requirement or extra
    names works here only because something else pulled it in: a pin of the other package
    could remove it from a user's install."""
    import ast

    declared = set()
    for req in PROJECT["dependencies"] + [r for extra in PROJECT["optional-dependencies"].values() for r in extra]:
        name = _dist_name(req)
        declared.add(IMPORT_NAMES.get(name, name.replace("-", "_")))
    stdlib = set(sys.stdlib_module_names)
    used: dict[str, str] = {}
    for path in sorted((ROOT / "src" / "cora").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for name in names:
                used.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    undeclared = {m: f for m, f in used.items() if m not in stdlib and m != "cora" and m not in declared}
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"

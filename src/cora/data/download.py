"""Download public datasets: streamed to a temporary file beside the target, checked, then renamed.

A failed, interrupted or mismatching download never leaves a file at the target path (the
temporary file is removed), and an existing good file is only replaced by a checked one.

Checks for ML-1M (``ml-1m.zip`` from GroupLens):

- with a sha256 (``sha256=`` / ``--sha256``, else :data:`ML1M_SHA256`): the file's sha256
  must match, else :class:`CoraError` naming both hashes;
- with no sha256 at all (``ML1M_SHA256 = None``): the size must be :data:`ML1M_SIZE` and the zip
  must hold ``ml-1m/ratings.dat``; the computed sha256 is printed so the user can pin it.

:data:`ML1M_SHA256` is the value independent public projects pin for GroupLens' ml-1m.zip (its
MD5 matching GroupLens' published c4d9eecfca2ab87c1945afe126590906). It could not be recomputed
here (no network); if GroupLens ever re-packs the file, pass ``--sha256`` with the new value.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from cora.errors import CoraError
from cora.io import atomic_path

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_FILENAME = "ml-1m.zip"
ML1M_SHA256: str | None = "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"
ML1M_SIZE = 5917549  # bytes of the GroupLens ml-1m.zip
ML1M_MEMBER = "ml-1m/ratings.dat"
# The paper's ML-1M splits: CoLLM's collm-datasets/ml-1m.zip (the CoRA paper uses CoLLM's data),
# pinned to a commit of zyang1580/CoLLM; its sha256 is the git blob's content, computed from a
# clone of that commit (blob b619201f), and equal to the copy the project's tests read.
COLLM_ML1M_URL = ("https://raw.githubusercontent.com/zyang1580/CoLLM/"
                  "48042b168bb5aa41b42e9c89e7582b718e301556/collm-datasets/ml-1m.zip")
COLLM_ML1M_FILENAME = "collm-ml-1m.zip"
COLLM_ML1M_SHA256 = "3e24968eca5707fbd0bd14d375ee47ef9a6f281de91bba06ef9fc19b66699503"
CHUNK_BYTES = 1 << 16
TIMEOUT_S = 60
USER_AGENT = "cora-dataset-download"


def download_movielens(out: str | os.PathLike, *, url: str | None = None, sha256: str | None = None) -> Path:
    """Download ML-1M to ``out`` (a file path, or a folder -> ``out/ml-1m.zip``) and verify it."""
    target = resolve_target(out, ML1M_FILENAME)
    url = url or ML1M_URL
    expected = _normalise_sha256(sha256 or ML1M_SHA256)
    _make_parent(target)
    with atomic_path(target) as tmp:  # removes tmp on any error, renames it onto target on success
        digest, size = fetch(url, tmp)
        if expected:
            _check_sha256(url, expected, digest)
        else:
            _check_ml1m(url, tmp, size)
            _console().print(f"sha256 {digest}  (no pinned checksum: checked size and contents; "
                             f"pass --sha256 {digest} to pin it)", highlight=False, soft_wrap=True)
    return target


def download_collm_ml1m(out: str | os.PathLike, *, url: str | None = None, sha256: str | None = None) -> Path:
    """Download the paper's ML-1M splits (CoLLM's zip) to ``out`` (a file, or a folder ->
    ``out/collm-ml-1m.zip``); its sha256 must match (pinned, or ``sha256``)."""
    target = resolve_target(out, COLLM_ML1M_FILENAME)
    url = url or COLLM_ML1M_URL
    expected = _normalise_sha256(sha256 or COLLM_ML1M_SHA256)
    _make_parent(target)
    with atomic_path(target) as tmp:
        digest, _ = fetch(url, tmp)
        _check_sha256(url, expected, digest)
    return target


# What an experiment file's `source:` may name instead of a path: downloaded (checked) on first use.
DOWNLOADS = {"collm-ml1m": (download_collm_ml1m, COLLM_ML1M_FILENAME)}


def resolve_target(out: str | os.PathLike, filename: str) -> Path:
    """A folder (existing, ending with '/', or a path without a suffix) gets ``filename`` inside it.

    The suffix rule exists because the CLI receives ``--out`` as a Path, which drops a trailing '/'.
    """
    text, path = os.fspath(out), Path(out)
    if path.is_dir() or text.endswith(("/", os.sep)) or (not path.exists() and not path.suffix):
        return path / filename
    return path


def fetch(url: str, dest: Path) -> tuple[str, int]:
    """Stream ``url`` into ``dest`` with a progress bar; return (sha256 hex, bytes)."""
    response = _open(url)
    digest, size = hashlib.sha256(), 0
    total = _content_length(response)
    with response, open(dest, "wb") as f, _progress(url, total) as advance:
        while True:
            try:
                block = response.read(CHUNK_BYTES)
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, IncompleteRead
                raise CoraError(f"{url}: download interrupted after {size:,} bytes ({_describe(e)})") from None
            if not block:
                break
            try:
                f.write(block)
            except OSError as e:
                raise CoraError(f"{dest.parent}: cannot write the download ({e.strerror or e})") from None
            digest.update(block)
            size += len(block)
            advance(len(block))
    if total is not None and size != total:
        raise CoraError(f"{url}: download incomplete: got {size:,} of {total:,} bytes; try again")
    return digest.hexdigest(), size


def _open(url: str):
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
        return urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        e.close()  # it holds the open connection
        raise CoraError(f"{url}: download failed: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise CoraError(f"{url}: download failed: {_describe(e.reason)} (check the URL and your connection)") from None
    except ValueError as e:  # no scheme, unknown scheme
        raise CoraError(f"{url}: not a valid download URL ({e})") from None
    except (OSError, http.client.HTTPException) as e:
        raise CoraError(f"{url}: download failed: {_describe(e)}") from None


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


def _check_sha256(url: str, expected: str, actual: str) -> None:
    if actual != expected:
        raise CoraError(f"{url}: sha256 mismatch: expected {expected}, got {actual}; the file was not saved")


def _check_ml1m(url: str, path: Path, size: int) -> None:
    if size != ML1M_SIZE:
        raise CoraError(f"{url}: got {size:,} bytes, expected {ML1M_SIZE:,} for {ML1M_FILENAME}; the file was not "
                        "saved (pass --sha256 to accept a different file)")
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError) as e:
        raise CoraError(f"{url}: not a readable zip file ({e}); the file was not saved") from None
    if ML1M_MEMBER not in names:
        raise CoraError(f"{url}: the zip has no {ML1M_MEMBER}; the file was not saved")


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", value):
        raise CoraError(f"sha256 must be 64 hexadecimal digits; got {value!r:.80}")
    return value


def _make_parent(target: Path) -> None:
    if target.exists() and target.is_dir():
        raise CoraError(f"{target}: is a folder; cannot save the download there")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CoraError(f"{target.parent}: cannot create the folder ({e.strerror or e})") from None


def _describe(e: object) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _console():
    from rich.console import Console

    return Console(stderr=True)


@contextlib.contextmanager
def _progress(url: str, total: int | None):
    """A rich download bar on stderr, only on a terminal (logs and pipes stay clean); yields advance(n)."""
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    console = _console()
    if not console.is_terminal:
        yield lambda n: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(url.rsplit("/", 1)[-1] or url, total=total)
        yield lambda n: bar.advance(task, n)

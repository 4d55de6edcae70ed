"""Atomic file and folder writes: a crash or a bad input never leaves a half-written output."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from cora.errors import one_line


def _process_umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


# mkstemp / mkdtemp create 0600 files and 0700 folders (they are meant to be private); an output
# renamed into place should instead have the modes any other file the user writes gets.
_UMASK = _process_umask()
FILE_MODE, DIR_MODE = 0o666 & ~_UMASK, 0o777 & ~_UMASK


def _tmp_sibling(path: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
    return Path(tmp)


def make_tmp_dir(target: Path) -> Path:
    """An empty temporary sibling folder of ``target`` with ordinary (umask) permissions."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, DIR_MODE)
    return tmp


def kill_point(name: str) -> None:
    """Test hook for the kill -9 tests (tests/test_crash_resume.py): with ``CORA_TEST_KILL_AT=NAME:N``
    in the environment, the N-th time this process passes the point ``NAME`` it SIGKILLs itself,
    as ``kill -9`` would (no cleanup, no ``finally``). Unset, it is one environment lookup.

    Points: ``<file>-write`` (a file's or folder's temporary is complete, not yet renamed into
    place), ``<folder>-swap`` (the old folder is moved aside, the new one not yet in place),
    ``<folder>-swapped`` (the new one is in place, the old aside not yet deleted), and the loops'
    ``step`` (after an optimizer step), ``predict-batch`` (after a scored batch) and ``cf-epoch``.
    """
    spec = os.environ.get("CORA_TEST_KILL_AT")
    if not spec:
        return
    want, _, n = spec.rpartition(":")
    if want == name:
        _kill_counts[name] = _kill_counts.get(name, 0) + 1
        if _kill_counts[name] == int(n):
            os.kill(os.getpid(), signal.SIGKILL)


_kill_counts: dict[str, int] = {}


def is_no_space(e: BaseException) -> bool:
    """Whether ``e`` says the disk (or quota) is full. Python and pyarrow raise OSError(ENOSPC);
    safetensors' writer raises its own error type with the OS message in it."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(e) or "Disk quota exceeded" in str(e)


def no_space_error(target: str | os.PathLike, what: str = "the previous file, if any, is untouched"):
    from cora.errors import CoraError

    return CoraError(f"no space left on device writing {target} ({what})")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    A full disk is a one-line :class:`~cora.errors.CoraError` naming ``path``, which is untouched."""
    path = Path(path)
    if path.is_dir():  # os.replace would fail with IsADirectoryError after all the work
        from cora.errors import CoraError

        raise CoraError(f"{path}: is a folder; give a file path to write")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = _tmp_sibling(path)
        yield tmp
        # Again here: a writer that replaces the file it was given (safetensors' save_file does)
        # makes a new 0600 file.
        os.chmod(tmp, FILE_MODE)
        kill_point(f"{path.name}-write")
        os.replace(tmp, path)
    except Exception as e:
        if is_no_space(e):
            raise no_space_error(path) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def remove_partial(path: str | os.PathLike) -> None:
    """Remove what writes of ``path`` by :func:`atomic_path` / :func:`atomic_dir` left behind when
    their process was killed (``.NAME.*.tmp`` temporaries beside it), and finish an interrupted
    folder swap (:func:`recover_dir`). Only for paths that one process writes (a run's checkpoint):
    another writer's temporary in flight would go too."""
    path = Path(path)
    recover_dir(path)
    if path.parent.is_dir():
        for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


# ----------------------------------------------------------------------------- guarded readers
# Every artifact the library reads (datasets, run folders, user files) goes through one of these:
# a missing, truncated or corrupt file is a one-line CoraError naming the file, never a traceback
# from inside pandas, pyarrow, safetensors or json. Parse libraries are imported only when used.




def _existing_file(path: str | os.PathLike, what: str) -> Path:
    from cora.errors import CoraError

    path = Path(path)
    if not path.exists() or path.is_dir():  # (a pipe, as bash's <(...), is fine)
        raise CoraError(f"{path}: {what} not found" + (" (it is a folder)" if path.is_dir() else ""))
    return path


def read_json(path: str | os.PathLike, what: str = "JSON file", mapping: bool = False) -> Any:
    """A JSON file (``mapping``: one that must hold an object, as metrics.json and meta.json do)."""
    from cora.errors import CoraError

    path = _existing_file(path, what)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CoraError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        "is the file cut short?") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CoraError(f"{path}: cannot read {what} ({one_line(e)})") from None
    if mapping and not isinstance(obj, dict):
        raise CoraError(f"{path}: expected a JSON object in the {what}, found a {type(obj).__name__}")
    return obj


def update_json(path: str | os.PathLike, updates: dict) -> dict:
    """Merge ``updates`` into the JSON object at ``path`` (created when absent) and write it back
    atomically: a run's metrics.json gains one key per evaluation, the others kept. Returns the
    merged object."""
    path = Path(path)
    merged = {**(read_json(path, mapping=True) if path.exists() else {}), **updates}
    write_json(path, merged)
    return merged


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file that must hold a mapping; a missing file, bad YAML or another top-level type is
    a one-line :class:`~cora.errors.CoraError` naming the file."""
    from cora.errors import CoraError

    path = _existing_file(path, f"{what} file")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CoraError(f"{path}: not valid YAML ({one_line(e)})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CoraError(f"{path}: cannot read {what} file ({one_line(e)})") from None
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise CoraError(f"{path}: expected a mapping of {what} fields, found a {type(d).__name__}")
    return d


def read_parquet(path: str | os.PathLike, what: str = "table", columns: list[str] | None = None):
    """A Parquet file as a DataFrame; ``columns``: ones it must have (a one-line error otherwise)."""
    import pandas as pd
    from pyarrow import ArrowException

    from cora.errors import CoraError

    path = _existing_file(path, what)
    try:
        df = pd.read_parquet(path)
    except (OSError, ValueError, ArrowException) as e:
        why = one_line(e).replace(f"Could not open Parquet input source '{path}': ", "")  # names the path again
        raise CoraError(f"{path}: not a readable Parquet file ({why}); is it cut short?") from None
    if missing := [c for c in columns or () if c not in df.columns]:
        raise CoraError(f"{path}: {what} lacks column(s) {', '.join(missing)}")
    return df


def read_safetensors(path: str | os.PathLike, what: str = "tensor file") -> dict:
    """Every tensor of a safetensors file, on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cora.errors import CoraError

    path = _existing_file(path, what)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CoraError(f"{path}: not a readable safetensors file ({one_line(e)}); is it cut short?") from None


def check_tensors(path: str | os.PathLike, tensors: dict, expected: dict[str, tuple[int, ...]], what: str) -> None:
    """``tensors`` (read from ``path``) must hold exactly the names and shapes of ``expected``;
    otherwise one line naming the file and the first tensor that differs. ``what`` says whose
    tensors are expected ("method 'cora'"), so the message tells a run of another method apart."""
    from cora.errors import CoraError

    missing = [n for n in expected if n not in tensors]
    unexpected = [n for n in tensors if n not in expected]
    if missing or unexpected:
        first = (f"tensor '{missing[0]}' {tuple(expected[missing[0]])} is missing" if missing
                 else f"tensor '{unexpected[0]}' is not one of its")
        others = len(missing) + len(unexpected) - 1
        raise CoraError(f"{path}: not the tensors of {what}: {first}"
                        + (f" ({others} more differ)" if others else "") + "; a run of another method or settings?")
    for n, shape in expected.items():
        if tuple(tensors[n].shape) != tuple(shape):
            raise CoraError(f"{path}: tensor '{n}' has shape {tuple(tensors[n].shape)}, {what} needs {tuple(shape)}; "
                            "a run of another backbone or settings?")


def read_csv(path: str | os.PathLike, what: str = "CSV file", **kwargs):
    """A CSV file as a DataFrame (``kwargs`` go to :func:`pandas.read_csv`)."""
    import pandas as pd

    from cora.errors import CoraError

    path = _existing_file(path, what)
    try:
        return pd.read_csv(path, **kwargs)
    except pd.errors.EmptyDataError:
        raise CoraError(f"{path}: not a readable CSV (the {what} is empty; expected a header line)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        raise CoraError(f"{path}: not a readable CSV ({one_line(e)})") from None


def open_zip(path: str | os.PathLike, what: str = "zip file"):
    """A :class:`zipfile.ZipFile` open for reading (close it, or use it in ``with``)."""
    import zipfile

    from cora.errors import CoraError

    path = _existing_file(path, what)
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError) as e:
        raise CoraError(f"{path}: not a readable zip file ({one_line(e)}); is the download truncated?") from None


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, yaml.safe_dump(obj, sort_keys=False))


def _json_default(o: Any) -> Any:
    # numpy scalars and Paths show up in metrics / configs; write them as plain JSON values.
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_parquet(path: str | os.PathLike, df) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and rename it into place at the end.

    On any exception the temporary folder is removed and ``path`` is left as it was, so a
    failed import or preparation never leaves a partial output behind. Replacing a folder
    (``overwrite``) keeps one complete copy at every moment, under kill -9 too: ``path`` or,
    between the two renames, ``.NAME.old`` beside it (:func:`recover_dir` puts it back).
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        from cora.errors import CoraError

        raise CoraError(f"{path}: output folder exists and is not empty (pass --overwrite to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = make_tmp_dir(path)
        yield tmp
        for f in tmp.rglob("*"):  # files a writer made private (safetensors writes 0600)
            if f.is_file() and not f.is_symlink() and f.stat().st_mode & 0o777 == 0o600:
                os.chmod(f, FILE_MODE)
        kill_point(f"{path.name}-write")
        # Swap so that at every moment one complete folder exists, even under kill -9: the old
        # one goes aside, the new one in, then the aside goes. A kill between the two renames
        # leaves only the aside copy, which recover_dir puts back.
        aside = _aside(path)
        if path.exists():
            if aside.exists():  # `path` is complete, so an aside copy is a leftover of an earlier swap
                shutil.rmtree(aside)
            os.replace(path, aside)
        kill_point(f"{path.name}-swap")
        os.replace(tmp, path)
        kill_point(f"{path.name}-swapped")
        shutil.rmtree(aside, ignore_errors=True)
    except BaseException as e:
        recover_dir(path)  # a swap that raised (rather than was killed) puts the previous folder back now
        if isinstance(e, Exception) and is_no_space(e):
            # Name the file inside the folder where the writer said which one it was.
            name = getattr(e, "filename", None)
            inside = tmp is not None and name and Path(name).is_relative_to(tmp)
            raise no_space_error(path / Path(name).relative_to(tmp) if inside else path,
                                 f"the previous {path.name}/, if any, is untouched") from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")


def recover_dir(path: str | os.PathLike) -> None:
    """Finish a swap of :func:`atomic_dir` that a kill interrupted: without ``path``, its aside
    copy is the complete previous folder and goes back; beside a complete ``path`` it is stale."""
    path = Path(path)
    aside = _aside(path)
    if aside.is_dir():
        if path.exists():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            os.replace(aside, path)


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike, keep=lambda path: False, enabled: bool = True) -> Iterator[Path]:
    """Undo what the block created in the folder ``path`` when it raises: a command that fails on
    bad input leaves no half-made run folder behind. Only entries that were not there before go
    (``path`` itself too if it was new), and nothing goes when ``keep(path)`` is true: a run that
    fails mid-training keeps its checkpoint for --resume. ``enabled``: False in all but one
    process of a distributed run, which alone owns the folder."""
    path = Path(path)
    existed = path.is_dir()
    before = set(os.listdir(path)) if existed else set()
    try:
        yield path
    except Exception:
        if enabled and path.is_dir() and not keep(path):
            if not existed:
                shutil.rmtree(path, ignore_errors=True)
            else:
                for name in set(os.listdir(path)) - before:
                    target = path / name
                    shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

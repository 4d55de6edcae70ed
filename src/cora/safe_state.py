"""Resume state without pickles: tensors in safetensors, everything else in JSON.

A run folder someone hands you must not run code on ``--resume``, and a ``torch.load`` pickle
can. A resume state is a tree of dicts, lists, tuples, numbers, strings, None and tensors (an
optimizer's and a scheduler's ``state_dict()``, RNG states as uint8 tensors, counters).
:func:`write_state` stores the tree's tensors in ``NAME.safetensors`` under their path in the tree
and the rest in ``NAME.json``, where a tensor is ``{"__tensor__": path}``, a tuple is
``{"__tuple__": [...]}`` and a dict with keys other than strings (an optimizer's ``{param index:
state}``) is ``{"__items__": [[key, value], ...]}``. :func:`read_state` gives back the same tree:
same dtypes, bitwise the same tensors, and floats exactly (JSON writes their shortest repr).
Both files are only parsed, never executed.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cora.errors import CoraError
from cora.io import is_no_space

FORMAT = "cora-resume-1"
PICKLE_NAME = "state.pt"  # what versions before FORMAT wrote: a torch.save pickle


def save_tensor_file(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """safetensors' ``save_file`` with a full disk reported as an OSError naming ``path`` (its own
    error type carries only the OS message), so the atomic writers can say which file it was."""
    try:
        save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))
    except (OSError, SafetensorError) as e:
        if is_no_space(e):
            raise OSError(errno.ENOSPC, "No space left on device", str(path)) from None
        raise


def write_state(folder: Path, name: str, state: dict) -> None:
    """Write ``state`` as ``folder/NAME.safetensors`` + ``folder/NAME.json``. Call it inside an
    atomic folder write (:func:`cora.io.atomic_dir`): the two files belong together."""
    folder = Path(folder)
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(state, [], tensors)
    save_tensor_file(folder / f"{name}.safetensors", tensors)
    path = folder / f"{name}.json"
    try:
        # allow_nan: a best score starts at -inf; Python's json reads -Infinity back.
        path.write_text(json.dumps({"format": FORMAT, "state": tree}, allow_nan=True) + "\n", encoding="utf-8")
    except OSError as e:
        raise OSError(e.errno, e.strerror, str(path)) from None


def read_state(folder: Path, name: str) -> dict:
    """The tree :func:`write_state` wrote; a missing, foreign or damaged file is a one-line
    :class:`~cora.errors.CoraError` naming it. A pickle left by an older version is refused."""
    folder = Path(folder)
    refuse_pickle(folder)
    meta_path, tensor_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    for path in (meta_path, tensor_path):
        if not path.exists():
            raise CoraError(f"{path}: resume state file missing (start the run again in a new --out)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CoraError(f"{meta_path}: not a cora resume state ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CoraError(f"{meta_path}: resume state format {found!r}, this version reads {FORMAT!r} "
                        "(start the run again in a new --out)")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as e:
        raise CoraError(f"{tensor_path}: not a readable safetensors file ({e})") from None
    try:
        return _decode(meta["state"], tensors)
    except (KeyError, TypeError, ValueError) as e:
        raise CoraError(f"{meta_path}: damaged resume state ({type(e).__name__}: {e})") from None


def refuse_pickle(folder: Path) -> None:
    """Checkpoints of older versions are pickles (``state.pt``), which run code when loaded: refuse
    them in one line instead of loading them."""
    old = Path(folder) / PICKLE_NAME
    if old.exists():
        raise CoraError(f"{old}: checkpoint format from an older cora version (a pickle, which can run code, so "
                        f"it is not loaded); start the run again (delete {Path(folder)} or use another --out)")


def has_state(folder: Path, name: str) -> bool:
    """Whether ``folder`` holds a resume state to load (an old pickle counts: loading refuses it)."""
    folder = Path(folder)
    return (folder / f"{name}.json").exists() or (folder / PICKLE_NAME).exists()


def _encode(obj: Any, path: list[str], tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        key = "/".join(path) or "."
        if key in tensors:
            raise ValueError(f"resume state: two tensors at {key}")
        tensors[key] = obj
        return {"__tensor__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, path + [str(i)], tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, path + [str(i)], tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, path + [k], tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, path, {}), _encode(v, path + [str(k)], tensors)] for k, v in obj.items()]}
    raise TypeError(f"resume state: cannot store a {type(obj).__name__} at {'/'.join(path) or 'the top'}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        if "__items__" in obj:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
        return {k: _decode(v, tensors) for k, v in obj.items()}
    return obj

"""Import the CoLLM-format splits (pickled pandas DataFrames) into the project's Parquet layout.

Unpickling executes code from the file, so it happens only when the user passes
``trust_pickle=True`` (``--trust-pickle``) — the one place where the project reads pickles.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd

from cora.data.store import write_dataset
from cora.errors import CoraError
from cora.io import open_zip, sha256_file

REQUIRED = {"train": "train_ood2.pkl", "valid": "valid_ood2.pkl", "test": "test_ood2.pkl"}
OPTIONAL = {"valid_small": "valid_small_ood2.pkl"}
VALID_SMALL_FRACTION = 0.5
VALID_SMALL_SEED = 2023


def _locate(src: Path) -> dict[str, tuple[str, callable]]:
    """Map each file name we need to a reader of its bytes (zip member or file)."""
    wanted = set(REQUIRED.values()) | set(OPTIONAL.values())
    found: dict[str, callable] = {}
    if src.is_dir():
        for p in sorted(src.rglob("*.pkl")):
            if p.name in wanted and p.name not in found:
                found[p.name] = (str(p), p.read_bytes)
    elif src.is_file():
        zf = open_zip(src)
        names = zf.namelist()
        for n in names:
            base = n.rsplit("/", 1)[-1]
            if base in wanted and base not in found:
                found[base] = (f"{src}:{n}", lambda n=n: zf.read(n))
    else:
        raise CoraError(f"{src}: no such file or folder")
    return found


def _read_pickle(label: str, reader) -> pd.DataFrame:
    try:
        data = reader()
    except (zipfile.BadZipFile, OSError, EOFError, zipfile.LargeZipFile) as e:
        raise CoraError(f"{label}: cannot read ({e}); is the zip truncated?") from None
    except Exception as e:  # zlib.error and friends for a corrupt member
        raise CoraError(f"{label}: cannot read ({type(e).__name__}: {e}); is the zip truncated?") from None
    try:
        df = pd.read_pickle(io.BytesIO(data))
    except Exception as e:
        raise CoraError(f"{label}: not a readable pickled DataFrame ({type(e).__name__}: {e})") from None
    if not isinstance(df, pd.DataFrame):
        raise CoraError(f"{label}: holds a {type(df).__name__}, expected a pandas DataFrame")
    return df


def import_collm(src: str | Path, out: str | Path, *, trust_pickle: bool = False, name: str | None = None,
                 domain: str | None = None, overwrite: bool = False) -> dict:
    src = Path(src)
    if not trust_pickle:
        raise CoraError(
            f"{src}: CoLLM splits are Python pickles, and loading a pickle runs code from the file; "
            "pass --trust-pickle if you trust its source"
        )
    files = _locate(src)
    for split, fname in REQUIRED.items():
        if fname not in files:
            raise CoraError(f"{src}: missing split file {fname} ({split})")
    frames = {split: _read_pickle(*files[fname]) for split, fname in REQUIRED.items()}
    if OPTIONAL["valid_small"] in files:
        frames["valid_small"] = _read_pickle(*files[OPTIONAL["valid_small"]])
        valid_small_origin = "file"
    else:
        # CoLLM's own rule: a 50 % sample of valid with seed 2023, drawn on the pickled index.
        frames["valid_small"] = frames["valid"].sample(frac=VALID_SMALL_FRACTION, random_state=VALID_SMALL_SEED)
        valid_small_origin = f"sample(frac={VALID_SMALL_FRACTION}, seed={VALID_SMALL_SEED}) of valid"
    name = name or _guess_name(src, files)
    domain = domain or ("books" if "book" in name.lower() else "movies")
    source = {"path": str(src.resolve()), "format": "collm-pickle", "valid_small": valid_small_origin}
    if src.is_file():
        source["sha256"] = sha256_file(src)
    return write_dataset(out, frames, name=name, domain=domain, source=source, overwrite=overwrite)


def _guess_name(src: Path, files: dict) -> str:
    label = files[REQUIRED["train"]][0]
    parts = label.replace(":", "/").split("/")
    if len(parts) >= 2 and parts[-2] and not parts[-2].endswith(".zip"):
        return parts[-2]
    return src.stem

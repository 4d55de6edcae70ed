"""Histories stored once per user (cora.data.histories): the same prompts and model inputs as
per-row lists, in a fraction of the memory.

"Before" is what folders held until now, each row's own ``his`` / ``his_title`` lists: CoLLM's
pickles as the CoLLM importer stored them, and for the raw ML-1M files the lists a plain loop
over each user's rows builds. "After" is ``Dataset.split`` on the per-user folders the importers
write now. Prompts (each method's template), tokenised inputs and CF history batches must match
row for row.
"""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cora.cf.data import pad_histories
from cora.cf.models import build_cf_model
from cora.config import CFConfig, LLMConfig
from cora.data.collm_import import import_collm
from cora.data.histories import HISTORY_FILE
from cora.data.movielens import prepare_movielens
from cora.data.prompts import COLLM_TEMPLATE, SOFT_PROMPT_TEMPLATE, TEMPLATE, build_prompt
from cora.data.store import load_dataset, write_dataset
from cora.errors import CoraError
from cora.methods import method_class

from helpers import synthetic_splits
from tiny_models import tiny_backbone

SPLITS = ("train", "valid", "valid_small", "test")


def collm_frames(shared_data: Path) -> dict[str, pd.DataFrame]:
    with zipfile.ZipFile(shared_data / "collm-ml-1m.zip") as zf:
        return {s: pd.read_pickle(io.BytesIO(zf.read(f"ml-1m/{s}_ood2.pkl"))).reset_index(drop=True) for s in SPLITS}


def per_row_reference(ds) -> dict[str, pd.DataFrame]:
    """Each row's history as the old importers built it: a loop over every user's rows in
    (split, row) order, collecting the positives seen so far."""
    rows = pd.concat([ds.split(s).assign(_split=k, _row=np.arange(len(ds.split(s))))
                      for k, s in enumerate(("train", "valid", "test"))], ignore_index=True)
    rows = rows.sort_values(["uid", "timestamp", "_split", "_row"], kind="stable")
    his, his_title, seen = {}, {}, {}
    for uid, iid, label, title, split, row in zip(rows["uid"], rows["iid"], rows["label"], rows["title"],
                                                  rows["_split"], rows["_row"]):
        items, titles = seen.setdefault(uid, ([0], [""]))
        his[(split, row)], his_title[(split, row)] = list(items), list(titles)
        if label == 1:
            items.append(int(iid))
            titles.append(title)
    out = {}
    for k, s in enumerate(("train", "valid", "test")):
        df = ds.split(s)
        out[s] = df.assign(his=[his[(k, r)] for r in range(len(df))], his_title=[his_title[(k, r)] for r in range(len(df))])
    valid = out["valid"]
    small = ds.split("valid_small")
    key = dict(zip(zip(valid["uid"], valid["iid"], valid["timestamp"]), zip(valid["his"], valid["his_title"])))
    pairs = [key[k] for k in zip(small["uid"], small["iid"], small["timestamp"])]
    out["valid_small"] = small.assign(his=[p[0] for p in pairs], his_title=[p[1] for p in pairs])
    return out


def assert_same_inputs(before: pd.DataFrame, after: pd.DataFrame, domain: str, max_len: int = 25) -> None:
    """The prompts of every template and the CF history batch of every row agree."""
    assert len(before) == len(after)
    assert [list(h) for h in after["his"]] == [list(h) for h in before["his"]]
    assert [list(t) for t in after["his_title"]] == [list(t) for t in before["his_title"]]
    for template in (TEMPLATE, COLLM_TEMPLATE, SOFT_PROMPT_TEMPLATE):
        fields = {"user_slot": "<U>", "item_slot": "<I>"}
        for max_titles in (10, 3):
            assert [build_prompt(h, t, domain, max_titles, template=template, **fields)
                    for h, t in zip(before["his_title"], before["title"])] == \
                   [build_prompt(h, t, domain, max_titles, template=template, **fields)
                    for h, t in zip(after["his_title"], after["title"])]
    assert torch.equal(pad_histories(before["his"], max_len), pad_histories(after["his"], max_len))


@pytest.fixture(scope="module")
def collm(shared_data, tmp_path_factory) -> tuple[dict, object]:
    out = tmp_path_factory.mktemp("hist") / "ml-1m"
    import_collm(shared_data / "collm-ml-1m.zip", out, trust_pickle=True)
    return collm_frames(shared_data), load_dataset(out)


@pytest.mark.slow
def test_collm_import_stores_histories_once_and_gives_the_same_inputs(collm):
    frames, ds = collm
    assert ds.meta["histories"] == "per-user" and (ds.root / HISTORY_FILE).exists()
    stored = pd.read_parquet(ds.root / "train.parquet")
    assert "his" not in stored.columns and "his_title" not in stored.columns and "his_len" in stored.columns
    assert len(pd.read_parquet(ds.root / HISTORY_FILE)) == ds.meta["users_seen"] == 838
    for s in SPLITS:
        after = ds.split(s)
        assert list(after.columns) == ["uid", "iid", "label", "timestamp", "his", "his_title", "title", "not_cold"]
        assert_same_inputs(frames[s], after, ds.domain)


@pytest.mark.slow
def test_collm_import_method_batches_are_identical(collm):
    """Tokenised prompts and batches of a text method (TALLRec), a slot method (CoLLM) and a
    CF history batch (SASRec inside CoLLM) from the old per-row frames and the new views."""
    frames, ds = collm
    sasrec = build_cf_model(CFConfig.for_model("sasrec", data=str(ds.root), dim=8, max_len=25), ds.n_users,
                            ds.n_items)
    # One backbone each: a method puts its adapters into the model it gets.
    methods = [method_class("tallrec")(tiny_backbone(), LLMConfig(data=str(ds.root), method="tallrec", backbone="tiny")),
               method_class("collm")(tiny_backbone(), LLMConfig(data=str(ds.root), method="collm", backbone="tiny"),
                                     sasrec)]
    for s in ("train", "test"):
        rows = np.random.default_rng(0).choice(len(frames[s]), size=1500, replace=False)
        before, after = frames[s].iloc[rows], ds.split(s).iloc[rows]
        for method in methods:
            old, new = method.encode(before, ds.domain), method.encode(after, ds.domain)
            assert old.input_ids == new.input_ids
            batch_old, batch_new = method.collate(old, list(range(64))), method.collate(new, list(range(64)))
            assert batch_old.keys() == batch_new.keys()
            assert all(torch.equal(batch_old[k], batch_new[k]) for k in batch_old)
        assert "his" in batch_new and batch_new["his"].shape == (64, 25)


@pytest.fixture(scope="module")
def raw_ml1m(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("hist-raw") / "ml-1m"
    prepare_movielens(shared_data / "raw-ml-1m-partial", out)
    return load_dataset(out)


@pytest.mark.slow
def test_raw_ml1m_histories_match_a_per_row_loop(raw_ml1m):
    reference = per_row_reference(raw_ml1m)
    for s in SPLITS:
        assert_same_inputs(reference[s], raw_ml1m.split(s), "movies")


def write_per_row_folder(ds, out: Path) -> Path:
    """The same dataset in the layout of folders written before (each row its own lists)."""
    out.mkdir()
    for s in SPLITS:
        df = ds.split(s)
        df.assign(his=df["his"].map(list), his_title=df["his_title"].map(list)).to_parquet(out / f"{s}.parquet")
    meta = {k: v for k, v in ds.meta.items() if k != "histories"}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.mark.slow
def test_per_row_folders_still_read_and_cost_several_times_more(raw_ml1m, tmp_path):
    old = load_dataset(write_per_row_folder(raw_ml1m, tmp_path / "old"))
    for s in SPLITS:
        assert_same_inputs(old.split(s), raw_ml1m.split(s), "movies")
    assert isinstance(old.split("valid")["his"].iat[0], list)  # that layout reads as before

    def traced(ds) -> int:
        fresh = load_dataset(ds.root)  # nothing cached
        tracemalloc.start()
        df = fresh.split("train")
        current = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(df) == 21_848
        return current

    # Measured: ~40 MB per-row lists against ~7 MB of views + the per-user table.
    assert traced(old) > 3 * traced(raw_ml1m)


def test_history_views_are_read_only(raw_ml1m_small):
    his = raw_ml1m_small.split("train")["his"]
    with pytest.raises(ValueError):
        his.iat[-1][0] = 7  # a view of the user's array, shared by every row of the user


def test_tables_whose_histories_are_not_prefixes_keep_per_row_lists(tmp_path):
    splits = synthetic_splits()  # random histories: a row's is no prefix of a later one's
    meta = write_dataset(tmp_path / "toy", splits, name="toy", domain="movies")
    ds = load_dataset(tmp_path / "toy")
    assert meta["histories"] == "per-row" and not (tmp_path / "toy" / HISTORY_FILE).exists()
    assert ds.split("train")["his"].tolist() == [list(map(int, h)) for h in splits["train"]["his"]]
    with pytest.raises(CoraError, match="rows of this dataset hold their own histories"):
        ds.user_histories()


def test_a_history_table_of_another_dataset_is_one_line(raw_ml1m_small, tmp_path):
    table = pd.read_parquet(raw_ml1m_small.root / HISTORY_FILE)
    table.iloc[:1].to_parquet(raw_ml1m_small.root / HISTORY_FILE)  # only the first user left
    fresh = load_dataset(raw_ml1m_small.root)
    with pytest.raises(CoraError) as err:
        fresh.split("train")
    message = str(err.value)
    assert "train.parquet: row" in message and "holds 0 history item(s) for that user" in message
    assert "\n" not in message


@pytest.fixture
def raw_ml1m_small(tmp_path):
    """A 3-user ML-1M-shaped folder written by the protocol (per-user histories)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    t = {"a": 1_000_000_000, "v": 1_020_000_000, "e": 1_035_000_000}  # 2001-09 / 2002-04 / 2002-10 (UTC)
    ratings = [f"1::1::5::{t['a']}", f"1::2::2::{t['a'] + 5}", f"1::3::4::{t['v']}", f"1::2::5::{t['e']}",
               f"2::2::4::{t['a'] + 9}", f"2::1::5::{t['v'] + 3}", f"2::3::1::{t['e'] + 3}",
               f"3::3::5::{t['a'] + 20}", f"3::1::4::{t['v'] + 7}", f"3::2::4::{t['e'] + 30}"]
    (raw / "ratings.dat").write_text("\n".join(ratings) + "\n", encoding="iso-8859-1")
    (raw / "movies.dat").write_text("1::Alpha (1990)::Drama\n2::Beta (1991)::Comedy\n3::Gamma (1992)::War\n",
                                    encoding="iso-8859-1")
    prepare_movielens(raw, tmp_path / "ds")
    return load_dataset(tmp_path / "ds")

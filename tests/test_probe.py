"""`cora probe` (cora.probe): the paper's Fig. 1 claim, measured on seeded multiple-choice questions.

Questions come from item metadata alone (years in ML-1M titles, genres from movies.dat or an
items table, franchises by shared leading words), so they are checked without a model. The
scorer is checked against a hand computation on a tiny random Llama, and the claim's two halves
on a trained tiny CoRA run: with no pair weights it *is* the frozen backbone, to the last bit;
with a pair's weights (and a LoRA with B != 0) the LLM changes.
"""

from __future__ import annotations

import calendar
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cora.data.store import load_dataset, write_dataset
from cora.probe.catalogue import item_catalogue, parse_genres
from cora.probe.questions import build_questions, franchise_key, shown_name, split_year
from cora.probe.rows import pair_context, pair_weights
from cora.probe.scoring import choice_logliks, encode

from helpers import main_in_process, synthetic_splits

# 30 ML-1M movies (real titles, years and genres): the tiny dataset's items 1..30.
MOVIES = [
    ("Star Wars: Episode IV - A New Hope (1977)", "Action|Adventure|Fantasy|Sci-Fi"),
    ("Star Wars: Episode V - The Empire Strikes Back (1980)", "Action|Adventure|Drama|Sci-Fi|War"),
    ("Star Wars: Episode VI - Return of the Jedi (1983)", "Action|Adventure|Romance|Sci-Fi|War"),
    ("Toy Story (1995)", "Animation|Children's|Comedy"),
    ("Toy Story 2 (1999)", "Animation|Children's|Comedy"),
    ("Godfather, The (1972)", "Action|Crime|Drama"),
    ("Godfather: Part II, The (1974)", "Action|Crime|Drama"),
    ("Heat (1995)", "Action|Crime|Thriller"),
    ("Casino (1995)", "Drama|Thriller"),
    ("Sabrina (1995)", "Comedy|Romance"),
    ("Sabrina (1954)", "Comedy|Romance"),
    ("American President, The (1995)", "Comedy|Drama|Romance"),
    ("Nixon (1995)", "Drama"),
    ("Sense and Sensibility (1995)", "Drama|Romance"),
    ("Braveheart (1995)", "Action|Drama|War"),
    ("Fargo (1996)", "Crime|Drama|Thriller"),
    ("Alien (1979)", "Action|Horror|Sci-Fi|Thriller"),
    ("Psycho (1960)", "Horror|Thriller"),
    ("Shining, The (1980)", "Horror"),
    ("Annie Hall (1977)", "Comedy|Romance"),
    ("Manhattan (1979)", "Comedy|Drama|Romance"),
    ("Fantasia (1940)", "Animation|Children's|Musical"),
    ("Dumbo (1941)", "Animation|Children's|Musical"),
    ("Wizard of Oz, The (1939)", "Adventure|Children's|Drama|Musical"),
    ("Singin' in the Rain (1952)", "Musical|Romance"),
    ("Unforgiven (1992)", "Western"),
    ("Maltese Falcon, The (1941)", "Film-Noir|Mystery"),
    ("Big Sleep, The (1946)", "Film-Noir|Mystery"),
    ("Duck Soup (1933)", "Comedy|War"),
    ("Nosferatu (Nosferatu, eine Symphonie des Grauens) (1922)", "Horror"),
]
TITLES = [t for t, _ in MOVIES]


def catalogue(with_genres: bool = True) -> pd.DataFrame:
    return pd.DataFrame({"iid": range(1, len(MOVIES) + 1), "title": TITLES,
                         "genres": [parse_genres(g) if with_genres else None for _, g in MOVIES]})


def write_movies_dat(path: Path) -> Path:
    # Movie ids of the file are not the dataset's iids: the join is by title, never by id.
    lines = [f"{1000 + k}::{t}::{g}" for k, (t, g) in enumerate(MOVIES)] + ["2000::Not In The Data (2001)::Drama"]
    path.write_bytes(("\n".join(lines) + "\n").encode("iso-8859-1"))
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """The conftest's trained-run root, with the tiny dataset's items given ML-1M titles first
    (tiny_dataset keeps a dataset that is already there): a CoLLM-like dataset, titles only."""
    root = tmp_path_factory.mktemp("probe")
    splits = synthetic_splits(n_users=12, n_items=30)
    for df in splits.values():
        df["title"] = [TITLES[i - 1] for i in df["iid"]]
        df["his_title"] = [[""] + [TITLES[i - 1] for i in h[1:]] for h in df["his"]]
    write_dataset(root / "data", splits, name="toy-ml", domain="movies")
    return root


@pytest.fixture(scope="module")
def movies_dat(root) -> Path:
    return write_movies_dat(root / "movies.dat")


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`cora ARGS` in this process (exit code, stdout + stderr)."""
    code, out, err = main_in_process(monkeypatch, capsys, *args)
    return code, out + err


# ----------------------------------------------------------------------------- titles
def test_titles_years_and_franchises_parse():
    assert split_year("Heat (1995)") == ("Heat", 1995)
    assert split_year("Color of Paradise, The (Rang-e Khoda) (1999)") == ("Color of Paradise, The (Rang-e Khoda)", 1999)
    assert split_year("Movie 7") == ("Movie 7", None)
    assert split_year("2001: A Space Odyssey (1968)") == ("2001: A Space Odyssey", 1968)
    assert shown_name("Godfather: Part II, The (1974)") == "The Godfather: Part II"
    assert shown_name("City of Lost Children, The (Cité des enfants perdus, La) (1995)") == \
        "The City of Lost Children (Cité des enfants perdus, La)"
    assert shown_name("Good, the Bad and the Ugly, The (1966)") == "The Good, the Bad and the Ugly"
    keys = {t: franchise_key(t) for t in ["Star Wars: Episode IV - A New Hope (1977)", "Toy Story 2 (1999)",
                                          "Star Trek II: The Wrath of Khan (1982)", "Back to the Future Part II (1989)",
                                          "Godfather: Part II, The (1974)", "Henry V (1989)", "Mission, The (1986)",
                                          "Mission: Impossible 2 (2000)"]}
    assert list(keys.values()) == ["star wars", "toy story", "star trek", "back to the future", "the godfather",
                                   "henry v", "the mission", "mission"]
    assert parse_genres("Action|Crime|Thriller") == ("Action", "Crime", "Thriller")
    assert parse_genres("") is None and parse_genres(None) is None and parse_genres(["Drama"]) == ("Drama",)


# ----------------------------------------------------------------------------- questions
def test_questions_are_deterministic_and_have_one_right_answer():
    items = catalogue()
    qs, notes = build_questions(items, 12, seed=5)
    again, _ = build_questions(items, 12, seed=5)
    assert [q.to_dict() for t in qs for q in qs[t]] == [q.to_dict() for t in again for q in again[t]]
    other, _ = build_questions(items, 12, seed=6)
    assert [q.iid for q in other["year"]] != [q.iid for q in qs["year"]]
    assert {t: len(v) for t, v in qs.items()} == {"year": 12, "genre": 12, "matching": 12} and notes == []
    by_iid = items.set_index("iid")
    for task, questions in qs.items():
        assert len({q.iid for q in questions}) == len(questions)  # each item asked at most once per task
        for q in questions:
            assert len(q.choices) == 4 and len(set(q.choices)) == 4 and 0 <= q.answer < 4
            assert all(c.startswith(" ") for c in q.choices) and q.prompt.endswith("\nAnswer:")
            title, genres = by_iid.loc[q.iid, "title"], set(by_iid.loc[q.iid, "genres"])
            name, year = split_year(title)
            assert f'"{shown_name(title)}"' in q.prompt and f"({year})" not in q.prompt
            if task == "year":
                assert q.choices[q.answer] == f" {year}"
                years = [int(c) for c in q.choices]
                assert years.count(year) == 1 and all(1900 < y < 2000 for y in years)
            if task == "genre":
                assert q.choices[q.answer].strip() in genres
                assert [c.strip() in genres for c in q.choices].count(True) == 1


def test_question_templates():
    qs, _ = build_questions(catalogue(), 30, seed=0)
    heat = next(q for q in qs["year"] if q.iid == 8)
    assert heat.prompt == 'Question: In which year was the movie "Heat" released?\nAnswer:'
    assert heat.choices[heat.answer] == " 1995"
    godfather = next(q for q in qs["genre"] if q.iid == 7)
    assert godfather.prompt == 'Question: Which genre does the movie "The Godfather: Part II" belong to?\nAnswer:'
    toy = next(q for q in qs["matching"] if q.iid == 5)
    options = "".join(f"\n-{c}" for c in toy.choices)
    assert toy.prompt == f'Question: Which of these movies belongs with the movie "Toy Story 2"?\nOptions:{options}\nAnswer:'
    assert toy.choices[toy.answer] == " Toy Story" and toy.kind == "franchise"
    books, _ = build_questions(catalogue(), 1, seed=0, domain="books")
    assert books["year"][0].prompt.startswith("Question: In which year was the book ") and " published?" in \
        books["year"][0].prompt


def test_accuracy_intervals_are_a_seeded_paired_question_bootstrap():
    from cora.probe.report import summarise
    from cora.probe.rows import Row

    answers = {"year": np.zeros(10, dtype=int)}

    def row(name, hits):  # log-likelihoods whose best choice is 0 on the first `hits` questions
        ll = np.tile([-1.0, -2.0, -3.0, -4.0], (10, 1))
        ll[hits:, 0] = -9.0
        return Row(name, "x", "x", logliks={"year": ll})

    rows = [row("base", 6), row("same", 6), row("better", 9)]
    summary = summarise(rows, answers, resamples=2000, seed=0)
    assert summary == summarise(rows, answers, resamples=2000, seed=0)
    base, same, better = (r["tasks"]["year"] for r in summary)
    assert (base["accuracy"], better["accuracy"]) == (0.6, 0.9) and base["choices"] == [0] * 6 + [1] * 4
    assert base["ci95"][0] <= 0.4 and 0.8 <= base["ci95"][1] <= 1.0  # ~ binomial(10, 0.6)
    assert same["diff_vs_first"] == 0 and same["diff_ci95"] == [0, 0]
    # Paired: the 3 extra right answers are the only difference, so a resample never finds the
    # better row worse, and the interval is narrower than the two rows' intervals suggest.
    lo, hi = better["diff_ci95"]
    assert better["diff_vs_first"] == pytest.approx(0.3) and 0 <= lo < 0.3 < hi <= 0.6
    assert hi - lo < better["ci95"][1] - base["ci95"][0]


def test_year_distractors_skip_the_years_of_same_titled_items():
    """Sabrina (1954) and Sabrina (1995) show the same name: neither year may be a wrong choice."""
    qs, _ = build_questions(catalogue(), 30, seed=0)
    sabrina = [q for q in qs["year"] if q.iid in (10, 11)]
    assert len(sabrina) == 2
    for q in sabrina:
        assert {" 1954", " 1995"} & set(q.choices) == {q.choices[q.answer]}


def test_matching_answers_share_a_franchise_or_the_genre_set_and_distractors_share_no_genre():
    items = catalogue()
    qs, _ = build_questions(items, 30, seed=1)
    matching = qs["matching"]
    by_name = {shown_name(t): (franchise_key(t), parse_genres(g)) for t, g in MOVIES}
    genres_of = dict(zip(items["iid"], items["genres"]))
    kinds = {q.kind for q in matching}
    assert kinds == {"franchise", "genre"}
    for q in matching:
        target_key, target_genres = franchise_key(TITLES[q.iid - 1]), set(genres_of[q.iid])
        answer = q.choices[q.answer].strip()
        assert f"- {answer}\n" in q.prompt  # the options are listed in the prompt
        if q.kind == "franchise":
            assert by_name[answer][0] == target_key
        else:
            assert set(by_name[answer][1]) == target_genres and by_name[answer][0] != target_key
        for k, c in enumerate(q.choices):
            if k != q.answer:
                assert not set(by_name[c.strip()][1]) & target_genres and by_name[c.strip()][0] != target_key
    star_wars = [q for q in matching if q.iid in (1, 2, 3)]
    assert star_wars and all(q.choices[q.answer].startswith(" Star Wars: Episode") for q in star_wars)
    # Nosferatu and Shining (Horror only) have the same genre set; Psycho (Horror|Thriller) does not.
    shining = next((q for q in matching if q.iid == 19), None)
    assert shining is None or shining.choices[shining.answer] == " Nosferatu (Nosferatu, eine Symphonie des Grauens)"


def test_genre_questions_only_where_genres_are_known():
    items = catalogue()
    items.loc[items["iid"] > 10, "genres"] = None
    qs, _ = build_questions(items, 50, seed=0)
    assert {q.iid for q in qs["genre"]} <= set(range(1, 11)) and len(qs["genre"]) == 10
    assert len(qs["year"]) == 30
    qs, notes = build_questions(catalogue(with_genres=False), 50, seed=0)
    assert "genre" not in qs and any(n.startswith("genre: skipped") and "--movies" in n for n in notes)
    # Without genres, matching keeps the franchise questions only (distractors: other franchises).
    assert {q.kind for q in qs["matching"]} == {"franchise"}
    assert {q.iid for q in qs["matching"]} == {1, 2, 3, 4, 5, 6, 7}


# ----------------------------------------------------------------------------- catalogue (data)
def test_catalogue_joins_genres_from_movies_dat_by_title(root, movies_dat):
    items, domain, notes = item_catalogue(root / "data", None)
    assert domain == "movies" and items["genres"].isna().all() and set(items["title"]) <= set(TITLES)
    items, _, notes = item_catalogue(root / "data", movies_dat)
    assert items["genres"].map(bool).all()
    assert items.set_index("title").loc["Heat (1995)", "genres"] == ("Action", "Crime", "Thriller")
    assert any("joined by exact title" in n for n in notes)
    alone, _, _ = item_catalogue(None, movies_dat)
    assert len(alone) == 31 and alone["iid"].tolist()[:2] == [1000, 1001]


def _ts(year: int, month: int, day: int) -> int:
    return calendar.timegm((year, month, day, 0, 0, 0))


def test_prepare_movielens_and_import_interactions_keep_genres(tmp_path):
    from cora.data.interactions import import_interactions
    from cora.data.movielens import prepare_movielens

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "movies.dat").write_bytes("6::Heat (1995)::Action|Crime|Thriller\n10::GoldenEye (1995)::Action|Adventure|"
                                     "Thriller\n3::Grumpier Old Men (1995)::Comedy|Romance\n".encode("iso-8859-1"))
    ratings = [(1, 6, 5, _ts(2001, 7, 1)), (1, 10, 4, _ts(2002, 5, 1)), (1, 3, 2, _ts(2002, 10, 1)),
               (2, 10, 5, _ts(2001, 8, 1)), (2, 6, 4, _ts(2002, 6, 1)), (2, 3, 5, _ts(2002, 11, 1))]
    (raw / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings))
    prepare_movielens(raw, tmp_path / "ml")
    items = load_dataset(tmp_path / "ml").item_table()
    assert items.to_dict("list") == {"iid": [1, 2, 3], "item": [6, 10, 3],
                                     "title": ["Heat (1995)", "GoldenEye (1995)", "Grumpier Old Men (1995)"],
                                     "genres": ["Action|Crime|Thriller", "Action|Adventure|Thriller", "Comedy|Romance"]}
    assert pd.read_parquet(tmp_path / "ml" / "users.parquet")["user"].tolist() == [1, 2]
    cat, _, _ = item_catalogue(tmp_path / "ml", None)
    assert cat["genres"].tolist() == [("Action", "Crime", "Thriller"), ("Action", "Adventure", "Thriller"),
                                      ("Comedy", "Romance")]
    # An event log carrying titles and genres, without an items file: the genres survive too.
    log = tmp_path / "events.csv"
    pd.DataFrame([(u, i, r, t, dict(zip([6, 10, 3], ["Heat (1995)", "GoldenEye (1995)", "Grumpier Old Men (1995)"]))[i],
                   {6: "Action|Crime", 10: "Action", 3: "Comedy"}[i]) for u, i, r, t in ratings],
                 columns=["user", "item", "rating", "timestamp", "title", "genres"]).to_csv(log, index=False)
    import_interactions(log, tmp_path / "own", split_dates="2001-06-01,2002-04-01,2002-09-01,2003-02-01",
                        domain="movies")
    own = load_dataset(tmp_path / "own").item_table().set_index("title")["genres"]
    assert own.to_dict() == {"Heat (1995)": "Action|Crime", "GoldenEye (1995)": "Action",
                             "Grumpier Old Men (1995)": "Comedy"}


# ----------------------------------------------------------------------------- scoring
def test_loglik_equals_a_hand_computation_on_a_tiny_model():
    from tiny_models import tiny_backbone

    bb = tiny_backbone("llama")
    qs, _ = build_questions(catalogue(), 3, seed=0)
    questions = qs["year"] + qs["genre"]
    got = choice_logliks(bb.model, bb.tokenizer, bb.bos_token_id, questions, batch_size=5)  # padded batches
    assert got.shape == (6, 4) and np.isfinite(got).all() and (got < 0).all()
    for qi, q in enumerate(questions):
        prompt = [bb.bos_token_id] + bb.tokenizer(q.prompt, add_special_tokens=False)["input_ids"]
        for ci, choice in enumerate(q.choices):
            cont = bb.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + cont])
            with torch.no_grad():
                logp = bb.model(input_ids=ids).logits[0].double().log_softmax(-1)
            # Token t of the continuation is predicted at the position before it.
            hand = sum(float(logp[len(prompt) - 1 + j, tok]) for j, tok in enumerate(cont))
            assert got[qi, ci] == pytest.approx(hand, abs=1e-4)
    # Batch composition changes the numbers only within float rounding.
    alone = choice_logliks(bb.model, bb.tokenizer, bb.bos_token_id, questions[:1], batch_size=1)
    assert np.allclose(alone, got[:1], atol=1e-4)
    prompt, choices = encode(bb.tokenizer, bb.bos_token_id, questions[:1])[0]
    assert prompt[0] == bb.bos_token_id and len(choices) == 4 and all(choices)


def test_cora_without_a_pair_is_the_frozen_backbone_bit_for_bit_and_a_pair_changes_it(run, movies_dat, root):
    from cora.llm.backbone import load_backbone
    from cora.train.run import load_run

    method, cfg, ds = load_run(run)
    bb = load_backbone(cfg.backbone)
    items, _, _ = item_catalogue(root / "data", movies_dat)
    qs, _ = build_questions(items, 6, seed=0)
    questions = [q for t in qs.values() for q in t]
    frozen = choice_logliks(bb.model, bb.tokenizer, bb.bos_token_id, questions, batch_size=8)
    no_pair = choice_logliks(method.llm, method.tokenizer, method.bos_token_id, questions, batch_size=8)
    assert np.array_equal(frozen, no_pair)  # to the last bit
    weights, pair = pair_weights(method, ds, seed=0)
    assert all(a.shape[0] == 1 for a in weights.values())
    train = ds.split("train")
    assert (pair["uid"], pair["iid"]) == (int(train["uid"].iloc[pair["row"]]), int(train["iid"].iloc[pair["row"]]))
    with_pair = choice_logliks(method.llm, method.tokenizer, method.bos_token_id, questions, batch_size=8,
                               context=pair_context(method, weights))
    assert np.isfinite(with_pair).all() and np.abs(with_pair - frozen).max() > 1e-4
    # The one pair's A reaches every sequence of a batch: batches of 1 give the same numbers.
    single = choice_logliks(method.llm, method.tokenizer, method.bos_token_id, questions[:2], batch_size=1,
                            context=pair_context(method, weights))
    assert np.allclose(single, with_pair[:2], atol=1e-4)
    assert method.adapter._weights.a_by_width is None  # the context leaves no weights behind


def test_tallrec_lora_equals_the_backbone_while_b_is_zero_and_differs_after(root):
    from llm_fixtures import tiny_config

    from cora.llm.backbone import load_backbone
    from cora.train.run import build_method

    cfg = tiny_config(root, method="tallrec")
    method, _ = build_method(cfg)
    bb = load_backbone(cfg.backbone)
    qs, _ = build_questions(catalogue(), 4, seed=0)
    frozen = choice_logliks(bb.model, bb.tokenizer, bb.bos_token_id, qs["year"], batch_size=8)
    def lora():
        return choice_logliks(method.llm, method.tokenizer, method.bos_token_id, qs["year"], batch_size=8)

    assert np.array_equal(lora(), frozen)  # peft's B starts at zero
    with torch.no_grad():
        torch.manual_seed(0)
        for name, p in method.llm.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn_like(p) * 0.5)
    assert np.abs(lora() - frozen).max() > 1e-3


# ----------------------------------------------------------------------------- command line
def test_cli_writes_table_plot_and_json(run, movies_dat, tmp_path, monkeypatch, capsys):
    out = tmp_path / "probe"
    code, output = cli(monkeypatch, capsys, "probe", run, "--movies", movies_dat, "--n", 8, "--out", out,
                       "--batch-size", 8)
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["probe.json", "probe.md", "probe.png", "questions.json"]
    result = json.loads((out / "probe.json").read_text())
    names = [r["name"] for r in result["rows"]]
    assert names[0].startswith("backbone (") and names[1] == "cora (run-cora), no pair"
    assert names[2].startswith("cora (run-cora), pair u")
    base, no_pair, with_pair = result["rows"]
    assert set(base["tasks"]) == {"year", "genre", "matching"}
    for task, stats in base["tasks"].items():
        assert stats["n"] == 8 and len(stats["choices"]) == 8
        lo, hi = stats["ci95"]
        assert 0 <= lo <= stats["accuracy"] <= hi <= 1
        assert no_pair["tasks"][task]["choices"] == stats["choices"]  # the same answers, question by question
        assert no_pair["tasks"][task]["diff_vs_first"] == 0 and no_pair["tasks"][task]["diff_ci95"] == [0, 0]
    questions = json.loads((out / "questions.json").read_text())
    assert [len(questions[t]) for t in ("year", "genre", "matching")] == [8, 8, 8]
    accuracy = np.mean([q["answer"] == c for q, c in zip(questions["year"], base["tasks"]["year"]["choices"])])
    assert accuracy == pytest.approx(base["tasks"]["year"]["accuracy"])
    assert (out / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "probe.md").read_text()
    assert md.startswith("| model | year (n=8) | genre (n=8) | matching (n=8) |") and "cora (run-cora), no pair" in md
    assert "knowledge probe" in output and "s/question" in output


def test_cli_without_genres_skips_the_genre_task_with_a_note(run, tmp_path, monkeypatch, capsys):
    out = tmp_path / "probe"
    code, output = cli(monkeypatch, capsys, "probe", run, "--n", 5, "--out", out)
    assert code == 0, output
    result = json.loads((out / "probe.json").read_text())
    assert set(result["tasks"]) == {"year", "matching"} and result["tasks"]["matching"]["kinds"] == {"franchise": 5}
    assert any(n.startswith("genre: skipped") for n in result["notes"])
    assert "genre: skipped" in output and "--movies" in output


@pytest.mark.parametrize("args, message", [
    (["missing-run"], "missing-run: no such run folder"),
    (["RUN", "--n", "0"], "--n 0: must be a whole number of questions per task, at least 1"),
    (["RUN", "--resamples", "10"], "--resamples 10: must be a whole number, at least 1000"),
    (["RUN", "--movies", "nowhere.dat"], "nowhere.dat: movie list not found (--movies)"),
    (["CF"], "a CF run, not an LLM run"),
    ([], "nothing to probe: give RUN folders or --backbone NAME"),
    (["RUN", "--n", "many"], "Invalid value for '--n'"),
])
def test_bad_input_is_one_line(run, root, tmp_path, monkeypatch, capsys, args, message):
    from llm_fixtures import tiny_cf_run

    args = [str(run) if a == "RUN" else str(tiny_cf_run(root)) if a == "CF" else a for a in args]
    code, output = cli(monkeypatch, capsys, "probe", *args, "--out", tmp_path / "out")
    lines = [line for line in output.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and message in lines[0], output
    assert not (tmp_path / "out").exists()


def test_device_and_dtype_place_every_row(run, movies_dat, tmp_path, monkeypatch):
    """`cora probe --device --dtype`: the frozen row and each run load where and as asked (a CUDA or
    bf16 run probed on a CPU in fp32), and no note claims a dtype mismatch."""
    import cora.probe.rows as rows_module
    import cora.train.run as run_module
    from cora.errors import CoraError
    from cora.probe.run import run_probe

    seen = []
    for module in (rows_module, run_module):
        real = module.load_backbone
        monkeypatch.setattr(module, "load_backbone",
                            lambda *a, _real=real, **k: seen.append((k.get("dtype"), k.get("device"))) or _real(*a, **k))
    result = run_probe([run], movies=movies_dat, n=4, out=tmp_path / "probe", device="cpu", dtype="bf16")
    assert seen == [("bf16", "cpu"), ("bf16", "cpu")]  # the frozen row, then the run
    assert not [n for n in result["notes"] if "computes in" in n]
    with pytest.raises(CoraError, match="dtype 'fp8'"):
        run_probe([run], movies=movies_dat, n=4, out=tmp_path / "probe2", dtype="fp8")

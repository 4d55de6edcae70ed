"""Seeded multiple-choice questions from item metadata alone (no model, no network).

Three tasks, each 4 choices with exactly one right answer:

* ``year``: the release year of a titled item, its title shown without the year. ML-1M titles
  carry it ("Heat (1995)"); distractors are years of other items, never a year of another item
  with the same shown title (remakes: "Hamlet" 1948 / 1990 / 1996).
* ``genre``: one genre of the item (items with known genres only); distractors are genres it
  does not have.
* ``matching`` (the paper's ITMatching, from metadata instead of GPT answers): which of 4
  titles belongs with a target title. The answer shares the target's franchise (the words
  before a ':' / ' - ' or a sequel number: "Star Wars: Episode V ..." with "Star Wars: Episode
  IV ..."), or else has exactly its genre set; distractors share no genre with the target (no
  franchise with it where genres are unknown).

Scoring appends each choice's text to the prompt (``Answer:`` + `` 1995``); the shown title
moves a trailing article to the front ("Godfather, The" -> "The Godfather"), as one would say it.
Every task draws from its own seeded generator, so one task's questions do not depend on whether
another task could be built.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

TASKS = ("year", "genre", "matching")
N_CHOICES = 4

YEAR_PROMPT = 'Question: In which year was the {noun} "{name}" {verb}?\nAnswer:'
GENRE_PROMPT = 'Question: Which genre does the {noun} "{name}" belong to?\nAnswer:'
MATCHING_PROMPT = 'Question: Which of these {nouns} belongs with the {noun} "{name}"?\nOptions:\n{options}\nAnswer:'

_YEAR = re.compile(r"^(?P<name>.*?\S)\s*\((?P<year>\d{4})\)\s*$")
# "Godfather: Part II, The" and "City of Lost Children, The (Cité des enfants perdus, La)".
_ARTICLE = re.compile(r"^(?P<main>.+?), (?P<art>The|A|An|La|Le|Les|Il|El|Das|Der|Die|L')(?P<rest>(?: \(.*\))?)$")
_ALT_TITLE = re.compile(r"\s*\(.*\)\s*$")  # "Godzilla (Gojira)": the original title in parentheses
# A sequel marker ending the base title: "Toy Story 2", "Back to the Future Part II", "Star Trek II".
# Roman I, V and X stay: "Henry V", "Malcolm X" are no sequels.
_SEQUEL = re.compile(r"\s+(?:Part\s+)?(?:\d{1,2}|II|III|IV|VI|VII|VIII|IX)$")


@dataclass(frozen=True)
class Question:
    task: str
    iid: int  # the item asked about (the target, for matching)
    prompt: str
    choices: tuple[str, ...]  # continuations, appended to the prompt as they are (each starts with a space)
    answer: int  # index of the right choice
    kind: str = ""  # matching: "franchise" or "genre" (what makes the answer belong)

    def to_dict(self) -> dict:
        return {**asdict(self), "choices": list(self.choices)}


def split_year(title: str) -> tuple[str, int | None]:
    """``"Heat (1995)"`` -> ("Heat", 1995); a title without a trailing (YYYY) -> (title, None)."""
    m = _YEAR.match(title)
    return (m["name"], int(m["year"])) if m else (title.strip(), None)


def shown_name(title: str) -> str:
    """The title as a question shows it: no year, a trailing article moved to the front."""
    name, _ = split_year(title)
    m = _ARTICLE.match(name)
    if not m:
        return name
    return f"{m['art']}{'' if m['art'].endswith(chr(39)) else ' '}{m['main']}{m['rest']}"


def franchise_key(title: str) -> str:
    """Lower-case base words of a title: what its sequels and episodes share ("star wars"). The
    article stays: "The Mission" is no episode of "Mission: Impossible"."""
    base = re.split(r":| - ", shown_name(title), maxsplit=1)[0]
    base = _SEQUEL.sub("", _ALT_TITLE.sub("", base))
    return " ".join(re.findall(r"\w+", base.lower()))


def noun_of(domain: str) -> tuple[str, str]:
    """The dataset's domain word ("movies") -> (singular, plural) for the prompts."""
    plural = domain.strip() or "items"
    return (plural[:-1] if plural.endswith("s") and len(plural) > 1 else plural), plural


# ----------------------------------------------------------------------------- building
def build_questions(items: pd.DataFrame, n: int, seed: int,
                    domain: str = "movies") -> tuple[dict[str, list[Question]], list[str]]:
    """Up to ``n`` questions per task from ``items`` (iid, title, genres: tuple or None), and notes
    on tasks that could not be built (e.g. no genres known). Deterministic in (items, n, seed)."""
    noun, nouns = noun_of(domain)
    verb = "published" if noun == "book" else "released"
    table = _prepared(items)
    notes: list[str] = []
    out: dict[str, list[Question]] = {}
    builders = {"year": lambda rng: _year_questions(table, n, rng, noun, verb),
                "genre": lambda rng: _genre_questions(table, n, rng, noun),
                "matching": lambda rng: _matching_questions(table, n, rng, noun, nouns)}
    for k, task in enumerate(TASKS):
        qs, why = builders[task](np.random.default_rng([seed, k]))
        if qs:
            out[task] = qs
        if why:
            notes.append(f"{task}: {why}")
        elif len(qs) < n:
            notes.append(f"{task}: {len(qs)} questions (fewer eligible items than --n {n})")
    return out, notes


def _prepared(items: pd.DataFrame) -> pd.DataFrame:
    table = items.sort_values("iid", kind="stable").reset_index(drop=True)
    parsed = table["title"].map(split_year)
    genres = table["genres"] if "genres" in table else pd.Series([None] * len(table), dtype=object)
    return pd.DataFrame({
        "iid": table["iid"].astype("int64"), "title": table["title"],
        "name": table["title"].map(shown_name), "year": [y for _, y in parsed],
        "key": table["title"].map(franchise_key),
        "plain": table["title"].map(lambda x: _ALT_TITLE.sub("", shown_name(x))),
        "genres": [frozenset(g) if g else None for g in genres],
    })


def _ask(rng: np.random.Generator, answer: str, distractors: list[str]) -> tuple[tuple[str, ...], int]:
    """The choices in a seeded order and where the answer landed."""
    choices = [answer, *distractors]
    order = rng.permutation(len(choices))
    return tuple(choices[i] for i in order), int(np.flatnonzero(order == 0)[0])


def _year_questions(t: pd.DataFrame, n: int, rng, noun: str, verb: str) -> tuple[list[Question], str | None]:
    dated = t[t["year"].notna()]
    if dated.empty:
        return [], "skipped: no title carries a (YYYY) year"
    years_of_name = dated.groupby("name")["year"].agg(lambda s: set(s.astype(int)))
    all_years = np.array(sorted(set(dated["year"].astype(int))))
    out: list[Question] = []
    for pos in rng.permutation(len(dated)):
        if len(out) == n:
            break
        row = dated.iloc[pos]
        others = all_years[~np.isin(all_years, list(years_of_name[row["name"]]))]
        if len(others) < N_CHOICES - 1:
            continue
        wrong = [str(y) for y in rng.choice(others, N_CHOICES - 1, replace=False)]
        choices, answer = _ask(rng, str(int(row["year"])), wrong)
        out.append(Question("year", int(row["iid"]), YEAR_PROMPT.format(noun=noun, name=row["name"], verb=verb),
                            tuple(f" {c}" for c in choices), answer))
    return out, None if out else "skipped: fewer than 4 distinct years"


def _genre_questions(t: pd.DataFrame, n: int, rng, noun: str) -> tuple[list[Question], str | None]:
    known = t[t["genres"].notna()]
    if known.empty:
        return [], "skipped: no item has genres (pass --movies movies.dat to join them by title)"
    all_genres = sorted(set().union(*known["genres"]))
    out: list[Question] = []
    for pos in rng.permutation(len(known)):
        if len(out) == n:
            break
        row = known.iloc[pos]
        others = [g for g in all_genres if g not in row["genres"]]
        if len(others) < N_CHOICES - 1:
            continue
        right = str(rng.choice(sorted(row["genres"])))
        wrong = [str(g) for g in rng.choice(others, N_CHOICES - 1, replace=False)]
        choices, answer = _ask(rng, right, wrong)
        out.append(Question("genre", int(row["iid"]), GENRE_PROMPT.format(noun=noun, name=row["name"]),
                            tuple(f" {c}" for c in choices), answer))
    return out, None if out else "skipped: fewer than 4 distinct genres"


def _genre_masks(genres: np.ndarray) -> np.ndarray:
    """Each item's genre set as a bit mask (0 = unknown), so "same set" and "no shared genre" are
    one vectorised test per question instead of a loop over the catalogue."""
    names = sorted(set().union(*[g for g in genres if g]))
    bit = {g: 1 << k for k, g in enumerate(names)}
    masks = [sum(bit[x] for x in g) if g else 0 for g in genres]
    # Python ints in an object array past 62 genres (an import with many categories).
    return np.array(masks, dtype=np.int64 if len(names) <= 62 else object)


def _matching_questions(t: pd.DataFrame, n: int, rng, noun: str, nouns: str) -> tuple[list[Question], str | None]:
    keys, names, plains = t["key"].to_numpy(), t["name"].to_numpy(), t["plain"].to_numpy()
    masks = _genre_masks(t["genres"].to_numpy())
    has_genres = bool((masks != 0).any())
    out: list[Question] = []
    for pos in rng.permutation(len(t)):
        if len(out) == n:
            break
        key, name, mask = keys[pos], names[pos], masks[pos]
        if has_genres and not mask:
            continue  # distractors could not be told apart from the answer by genre
        other = (names != name) & (keys != key)
        # A franchise mate is another episode, not a film of the same title ("The Promise" of
        # 1994 and of 1996, "Godzilla" and "Godzilla (Gojira)").
        mates = np.flatnonzero((keys == key) & (plains != plains[pos])) if key else np.array([], dtype=np.int64)
        kind = "franchise"
        if not len(mates) and mask:
            mates = np.flatnonzero(other & (masks == mask))
            kind = "genre"
        if not len(mates):
            continue
        pool = other & (masks != 0) & ((masks & mask) == 0) if mask else other
        mate = int(rng.choice(mates))
        # Distinct shown titles only: two identical options would make the answer ambiguous.
        candidates = np.flatnonzero(pool)
        _, first = np.unique(names[candidates], return_index=True)
        candidates = candidates[np.sort(first)]
        candidates = candidates[names[candidates] != names[mate]]
        if len(candidates) < N_CHOICES - 1:
            continue
        wrong = [str(names[i]) for i in rng.choice(candidates, N_CHOICES - 1, replace=False)]
        choices, answer = _ask(rng, str(names[mate]), wrong)
        options = "\n".join(f"- {c}" for c in choices)
        out.append(Question("matching", int(t["iid"].iloc[pos]),
                            MATCHING_PROMPT.format(nouns=nouns, noun=noun, name=name, options=options),
                            tuple(f" {c}" for c in choices), answer, kind))
    return out, None if out else "skipped: no item has a franchise or genre-set mate"

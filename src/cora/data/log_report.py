"""What an imported log holds that the split tables do not show: coarse times, repeats, sampled
negatives. Counted once by ``cora data import-interactions``, kept in ``meta.json``
(``source``) and printed under the split table by :func:`import_notes`."""

from __future__ import annotations

import pandas as pd

from cora.data.protocol import SplitWindows


def time_ties(data: pd.DataFrame, windows: SplitWindows) -> dict:
    """Ties the time column leaves in the kept events (ordered, before any sampled negatives):
    events that share their user's time with another of their events (the tie rule orders them,
    not the data), and events at a split cut (a cut never divides a time: they all go later)."""
    keys = ["user", "timestamp"] + (["subsecond"] if "subsecond" in data.columns else [])
    ts = data["timestamp"].to_numpy()
    return {"events_sharing_user_time": int(data.duplicated(keys, keep=False).sum()),
            "events_at_cuts": {"valid_start": int((ts == windows.bounds[1]).sum()),
                               "test_start": int((ts == windows.bounds[2]).sum())}}


def reinteractions(events: pd.DataFrame) -> dict:
    """User-item pairs with more than one event (after the duplicates policy), and how many of
    them carry both labels (rated high once and low another time): each event stays its own row."""
    pairs = events.groupby(["user", "item"], sort=False)["label"].agg(["size", "nunique"])
    repeated = pairs["size"].to_numpy() > 1
    return {"pairs": int(repeated.sum()), "events": int(pairs["size"].to_numpy()[repeated].sum()),
            "pairs_with_both_labels": int((pairs["nunique"].to_numpy() > 1).sum())}


def import_notes(source: dict) -> list[str]:
    """One line per fact of ``meta['source']`` a user should know before training on the data."""
    lines = []
    times = source.get("times", {})
    if times.get("unit") == "unix milliseconds":
        lines.append(f"times: unix milliseconds (column '{times['column']}'), stored as seconds; the "
                     "milliseconds order events within a second")
    if times.get("date_only"):
        cuts = times["events_at_cuts"]
        split = source.get("split", {})
        lines.append(f"times: dates without a time of day (column '{times['column']}'): "
                     f"{times['events_sharing_user_time']:,} events share their day with another event of their user "
                     "(ordered within it by the item's first appearance in the file, then file order); "
                     f"{cuts['valid_start']:,} events on valid's first day ({split.get('valid_start', '?')}) and "
                     f"{cuts['test_start']:,} on test's ({split.get('test_start', '?')}), each day kept whole in the "
                     "later split")
    dup = source.get("duplicates", {})
    if dup.get("events_removed"):
        kept = "first" if dup["policy"] == "drop" else "last"
        lines.append(f"duplicates: {dup['events_removed']:,} events removed (--duplicates {dup['policy']}: the {kept} "
                     f"of each set of events with the same user, item and time kept); "
                     f"{dup['sets_with_both_labels']:,} of those sets disagreed on the label")
    again = source.get("reinteractions", {})
    if again.get("pairs"):
        lines.append(f"re-interactions: {again['pairs']:,} user-item pairs occur more than once ({again['events']:,} "
                     f"events), {again['pairs_with_both_labels']:,} of them with both labels; each event is its own row")
    for col in source.get("columns_ignored", []):
        lines.append(f"column '{col}' not used: with --negatives every event is a positive")
    neg = source.get("negatives")
    if neg:
        lines.append(f"negatives: {neg['per_positive']} per positive sampled (NCF, He et al. 2017; seed {neg['seed']}) "
                     f"from {neg['item_pool']:,} items: +{neg['rows_added']:,} rows")
    return lines


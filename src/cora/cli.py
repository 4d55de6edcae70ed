"""Command-line front end. Thin: every command calls a library function and prints its result.

User errors (:class:`cora.errors.CoraError`) become one red line and exit code 1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from cora.config import CFConfig, LLMConfig
from cora.errors import CoraError, one_line
from cora.options import config_options, spelled_flags
from cora.progress import make_console, quiet_hf
from cora.ranges import check_flags, check_options

app = typer.Typer(no_args_is_help=True, add_completion=False, help="CoRA: collaborative LoRA recommenders.")
data_app = typer.Typer(no_args_is_help=True, help="Get, import and prepare interaction data.")
download_app = typer.Typer(no_args_is_help=True, help="Download public datasets (sha256-checked).")
prepare_app = typer.Typer(no_args_is_help=True, help="Process raw dataset files into the cora layout.")
cf_app = typer.Typer(no_args_is_help=True, help="Collaborative-filtering models: MF, LightGCN, SASRec.")
app.add_typer(data_app, name="data")
data_app.add_typer(download_app, name="download")
data_app.add_typer(prepare_app, name="prepare")
app.add_typer(cf_app, name="cf")

# Not on a terminal (a log, a pipe): wide and unwrapped, not cut at 80 columns (cora.progress).
console = make_console()
err_console = make_console(stderr=True)


def _print_meta(meta: dict, out: Path) -> None:
    from rich.table import Table

    t = Table(title=f"{meta['name']} ({meta['domain']}) -> {out}")
    for c in ("split", "rows", "users", "items", "positive rate", "warm rows"):
        t.add_column(c, justify="right")
    for s, st in meta["splits"].items():
        t.add_row(s, f"{st['rows']:,}", f"{st['users']:,}", f"{st['items']:,}", f"{st['positive_rate']:.3f}", f"{st['warm_rows']:,}")
    console.print(t)
    console.print(f"n_users={meta['n_users']:,}  n_items={meta['n_items']:,}  "
                  f"(seen: {meta['users_seen']:,} users, {meta['items_seen']:,} items)")


# ----------------------------------------------------------------------------- data
@download_app.command("movielens")
def data_download_movielens(
    out: Path = typer.Option(..., "--out", help="Where to save ml-1m.zip (a file path, or a folder)."),
    url: str | None = typer.Option(None, help="Override the download URL (mirrors, tests)."),
    sha256: str | None = typer.Option(None, help="Override the expected sha256."),
) -> None:
    """Download ML-1M (ml-1m.zip) from GroupLens and check its sha256."""
    from cora.data.download import download_movielens

    path = download_movielens(out, url=url, sha256=sha256)
    console.print(f"saved {path}")


@download_app.command("collm-ml1m")
def data_download_collm_ml1m(
    out: Path = typer.Option(..., "--out", help="Where to save collm-ml-1m.zip (a file path, or a folder)."),
    url: str | None = typer.Option(None, help="Override the download URL (mirrors, tests)."),
    sha256: str | None = typer.Option(None, help="Override the expected sha256."),
) -> None:
    """Download the paper's ML-1M splits (CoLLM's collm-datasets/ml-1m.zip, pinned commit and
    sha256); then: cora data import-collm FILE --out runs/ml1m --trust-pickle."""
    from cora.data.download import download_collm_ml1m

    path = download_collm_ml1m(out, url=url, sha256=sha256)
    console.print(f"saved {path}")


@data_app.command("import-collm")
def data_import_collm(
    src: Path = typer.Argument(..., help="CoLLM-format zip or folder (train_ood2.pkl, valid_ood2.pkl, test_ood2.pkl)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling (runs code from the file)."),
    name: str | None = typer.Option(None, help="Dataset name (default: from the file layout)."),
    domain: str | None = typer.Option(None, help="Domain word for prompts: movies or books."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Import CoLLM / BinLLM / CoRA pickled splits into Parquet + meta.json."""
    from cora.data.collm_import import import_collm

    meta = import_collm(src, out, trust_pickle=trust_pickle, name=name, domain=domain, overwrite=overwrite)
    _print_meta(meta, out)


@data_app.command("import-interactions")
def data_import_interactions(
    interactions: Path = typer.Argument(..., metavar="INTERACTIONS",
                                        help="One row per event: user, item, rating or 0/1 label, time "
                                        "(unix seconds or ISO date, UTC). csv, tsv, parquet or RecBole .inter."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create."),
    items: Path | None = typer.Option(None, "--items", help="Item id -> title (+ other columns, kept in "
                                         "items.parquet). RecBole: the .item beside the .inter by default."),
    fmt: str | None = typer.Option(None, "--format", help="csv | tsv | parquet | recbole (default: by file name)."),
    user: str | None = typer.Option(None, "--user", metavar="COL", help="User column (default: detected)."),
    item: str | None = typer.Option(None, "--item", metavar="COL", help="Item column (default: detected)."),
    time: str | None = typer.Option(None, "--time", metavar="COL", help="Time column (default: detected)."),
    rating: str | None = typer.Option(None, "--rating", metavar="COL", help="Rating column (label = rating >= threshold)."),
    positive_threshold: float | None = typer.Option(None, "--positive-threshold", metavar="X",
                                                       help="Ratings >= X are positives (default 4)."),
    label: str | None = typer.Option(None, "--label", metavar="COL", help="A 0/1 label column instead of a rating."),
    title: str | None = typer.Option(None, "--title", metavar="COL", help="Title column of --items (or of "
                                        "INTERACTIONS without --items)."),
    split_dates: str | None = typer.Option(None, "--split-dates", metavar="TRAIN_START,VALID_START,TEST_START,END",
                                              help="UTC dates; each split is [start, next start); rows outside dropped."),
    split_fractions: str | None = typer.Option(None, "--split-fractions", metavar="TRAIN,VALID,TEST",
                                                  help="Cut the time line at these shares of events (default 0.8,0.1,0.1)."),
    domain: str = typer.Option("items", "--domain", metavar="WORD", help="Plural noun for prompts: movies, books, ..."),
    valid_small_frac: float = typer.Option(0.5, "--valid-small-frac", help="Share of valid sampled as valid_small."),
    seed: int = typer.Option(2023, "--seed", help="Seed of the valid_small sample and of --negatives."),
    negatives: int | None = typer.Option(None, "--negatives", metavar="N",
                                         help="A log of positives only (clicks, plays): every event is a positive; "
                                         "sample N negatives per positive among the items the user never touched "
                                         "(NCF's protocol, docs/own-data.md)."),
    duplicates: str = typer.Option("error", "--duplicates", metavar="error|drop|keep-last",
                                   help="Events with the same user, item and time: stop (error), keep the first "
                                   "(drop) or the last (keep-last)."),
    encoding: str = typer.Option("utf-8", "--encoding", help="Encoding of text files (e.g. latin-1)."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Import your own interaction log with the ML-1M protocol (histories, ids, not_cold, valid_small)."""
    from cora.data.interactions import import_interactions

    meta = import_interactions(interactions, out, items=items, fmt=fmt, user=user, item=item, time=time,
                               rating=rating, positive_threshold=positive_threshold, label=label, title=title,
                               split_dates=split_dates, split_fractions=split_fractions, domain=domain,
                               valid_small_frac=valid_small_frac, seed=seed, negatives=negatives,
                               duplicates=duplicates, encoding=encoding, overwrite=overwrite)
    _print_meta(meta, out)
    from cora.data.log_report import import_notes

    for line in import_notes(meta["source"]):  # what the table does not show: times, repeats, negatives
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@prepare_app.command("movielens")
def data_prepare_movielens(
    raw: Path = typer.Option(..., "--raw", help="Folder or zip with ratings.dat[.gz], movies.dat, users.dat."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Build ML-1M splits from the raw GroupLens files with CoLLM's protocol."""
    from cora.data.movielens import prepare_movielens

    meta = prepare_movielens(raw, out, overwrite=overwrite)
    _print_meta(meta, out)


@prepare_app.command("amazon-book")
def data_prepare_amazon_book(
    reviews: Path = typer.Option(..., "--reviews", help="Books_5.json.gz (Amazon 2018 reviews, JSON lines)."),
    meta: Path = typer.Option(..., "--meta", help="meta_Books.json.gz (Amazon 2018 metadata, JSON lines)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Build Amazon-Book splits from the raw 2018 files with CoLLM's protocol."""
    from cora.data.amazon import prepare_amazon_book

    info = prepare_amazon_book(reviews, meta, out, overwrite=overwrite)
    _print_meta(info, out)


@data_app.command("info")
def data_info(root: Path = typer.Argument(..., help="Dataset folder.")) -> None:
    """Show a dataset folder's statistics."""
    from cora.data.store import load_dataset

    _print_meta(load_dataset(root).meta, root)


# ----------------------------------------------------------------------------- cf
@cf_app.command("train")
@config_options(CFConfig, skip=("model", "data"))
def cf_train(
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    model: str = typer.Option("mf", "--model", help="mf | lightgcn | sasrec"),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or resume)."),
    resume: bool = typer.Option(True, help="Resume an interrupted run in --out (default on)."),
    settings: dict = None,
) -> None:
    """Train a CF model with early stopping on full-valid AUC; writes a run folder. A setting not
    given takes the paper's for the model (shown per model)."""
    from cora.cf.train import train_cf

    check_flags("CFConfig", settings, spelled=spelled_flags(CFConfig))
    overrides = {k: v for k, v in settings.items() if v is not None}
    cfg = CFConfig.for_model(model, source="--model", data=str(data), **overrides)
    metrics = train_cf(cfg, out, resume=resume)
    _print_metrics(metrics, title=f"{model} -> {out}")


@cf_app.command("evaluate")
def cf_evaluate(
    run: Path = typer.Argument(..., help="CF run folder."),
    split: str = typer.Option("test", help="valid | test"),
    limit: int | None = typer.Option(None, help="Score the same ~N-row seeded sample as 'cora evaluate --limit N'."),
    per_user: int | None = typer.Option(None, "--per-user", help="With --limit: at most N rows of each drawn user "
                                           "(default 10: the sample spreads over ~N/10 users)."),
    whole_users: bool = typer.Option(False, "--whole-users", help="With --limit: keep every row of each drawn user."),
) -> None:
    """Recompute a split's metrics from the saved CF model."""
    from cora.cf.train import evaluate_cf_run

    check_options(limit=limit, per_user=per_user)
    per_user = _per_user(limit, per_user, whole_users)
    metrics = evaluate_cf_run(run, split, limit, per_user)
    _print_metrics({split: metrics}, title=str(run))


# ----------------------------------------------------------------------------- LLM methods
@app.command("train")
@config_options(LLMConfig)
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    config: Path | None = typer.Option(None, "--config", help="YAML config; flags override its fields."),
    stage_from: list[str] = typer.Option([], "--stage-from", metavar="STAGE=RUN",
                                         help="Take a stage from a finished run instead of training it "
                                              "(CoLLM / BinLLM: lora=TALLREC_RUN / text=TALLREC_RUN)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    keep_checkpoint: bool = typer.Option(False, "--keep-checkpoint",
                                         help="Keep checkpoint/ (last weights + optimizer state) when the run "
                                              "finishes; by default a finished run deletes it."),
    allow_changed: str | None = typer.Option(None, "--allow-changed", metavar="FIELDS",
                                                help="With --resume: settings that may differ from the run's, "
                                                     "comma-separated, from lr, dtype, attention (recorded in "
                                                     "resume_changes.json)."),
    settings: dict = None,
) -> None:
    """Train an LLM method (CoRA by default) with the one training loop; writes a run folder.
    Every setting below is a field of the run's config.yaml; a flag not given takes the method's
    reference setting (shown per method), or the --config file's."""
    from cora.io import read_yaml_mapping
    from cora.train.run import train_run

    # A partial --config gets the method's reference settings for what it leaves out; a run's own
    # config.yaml names every field, so it rebuilds that run exactly.
    base = read_yaml_mapping(config, "config") if config else {}
    check_flags("LLMConfig", settings, spelled=spelled_flags(LLMConfig))  # named as typed, before the merge
    base.update({k: v for k, v in settings.items() if v is not None})
    cfg = LLMConfig.for_method(base, source=str(config or "flags"))
    if not cfg.data:
        raise CoraError("--data is required (or a 'data' field in --config)")
    if bad := [s for s in stage_from if "=" not in s]:
        raise CoraError(f"--stage-from {bad[0]}: write STAGE=RUN, e.g. lora=runs/tallrec")
    changeable = {f.strip() for f in (allow_changed or "").split(",") if f.strip()}
    if changeable and not resume:
        raise CoraError("--allow-changed is for --resume (a new run has nothing to change)")
    if note := cpu_beside_gpu_note(cfg.device, cfg.dtype, device_given="device" in base):
        _say(note)
    summary = train_run(cfg, out, resume=resume, stage_from=dict(s.split("=", 1) for s in stage_from),
                        keep_checkpoint=keep_checkpoint, allow_changed=changeable)
    console.print_json(json.dumps(summary))


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    split: str = typer.Option("test", help="valid | valid_small | test"),
    limit: int | None = typer.Option(None, help="Score a seeded sample of ~N rows (<= --per-user rows of each "
                                        "drawn user)."),
    per_user: int | None = typer.Option(None, "--per-user", help="With --limit: at most N rows of each drawn user "
                                           "(default 10: the sample spreads over ~N/10 users)."),
    whole_users: bool = typer.Option(False, "--whole-users", help="With --limit: keep every row of each drawn user."),
    ranking: bool = typer.Option(False, "--ranking", help="Top-K instead: HR@K / NDCG@K of CF alone vs CF + "
                                 "rerank by the run (protocol: cora.serve.ranking)."),
    k: int = typer.Option(10, "--k", help="--ranking: length of the top list."),
    candidates: int = typer.Option(100, "--candidates", help="--ranking: unseen items CF retrieves per user."),
    limit_users: int | None = typer.Option(None, "--limit-users", help="--ranking: a seeded sample of N users."),
    cf: Path | None = typer.Option(None, "--cf", help="--ranking: CF run for retrieval (runs without one, e.g. ICL)."),
    internal_ids: bool = typer.Option(False, "--internal-ids", help="--ranking: the candidates file adds cora's "
                                      "internal ids (uid, iid) beside the dataset's (user, item)."),
    device: str | None = typer.Option(None, "--device", help="Score here (cpu, cuda, cuda:N, auto) instead of where "
                                      "the run trained, e.g. a CUDA run on a CPU; recorded in metrics.json."),
    dtype: str | None = typer.Option(None, "--dtype", help="Score in fp32 | bf16 | fp16 instead of the run's "
                                     "precision; recorded in metrics.json."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads for torch (default: torch's own "
                                       "choice, as the run's training used)."),
) -> None:
    """Score a split with a run's best weights; writes metrics.json and predictions-<split>.parquet.
    With --ranking: HR@K and NDCG@K of CF retrieval alone vs reranked by the run (metrics.json), and
    the scored candidates in the dataset's own ids (ranking-<key>.parquet)."""
    check_options(limit=limit, per_user=per_user, k=k, candidates=candidates, limit_users=limit_users)
    if threads is not None:
        from cora.serve.placement import set_threads

        set_threads(threads)
    if ranking:
        if limit is not None or per_user is not None or whole_users:
            raise CoraError("--limit / --per-user / --whole-users are for AUC; with --ranking use --limit-users")
        if device is not None or dtype is not None:
            raise CoraError("--device / --dtype are for AUC scoring; --ranking scores where the run trained")
        from cora.serve.ranking import evaluate_ranking

        _print_ranking(evaluate_ranking(run, split, k, candidates, limit_users, cf=cf, internal_ids=internal_ids),
                       title=str(run))
        return
    if limit_users is not None or cf is not None or internal_ids:
        raise CoraError("--limit-users, --cf and --internal-ids go with --ranking")
    from cora.train.run import evaluate_run

    metrics = evaluate_run(run, split, limit, per_user=_per_user(limit, per_user, whole_users), device=device,
                           dtype=dtype)
    _print_metrics({split: metrics}, title=str(run))


def _per_user(limit: int | None, per_user: int | None, whole_users: bool) -> int | None:
    """The per-user cap of an evaluation sample (cora.data.sampling.resolve_per_user)."""
    from cora.data.sampling import resolve_per_user

    if (per_user is not None or whole_users) and limit is None:
        raise CoraError("--per-user / --whole-users go with --limit (they shape a limited sample)")
    if per_user is not None and whole_users:
        raise CoraError("give --per-user or --whole-users, not both")
    return resolve_per_user(limit, per_user, whole_users)


def _print_ranking(m: dict, title: str) -> None:
    from rich.table import Table

    t = Table(title=f"{title}: {m['split']} ranking")
    for c in ("ranking", f"HR@{m['k']}", f"NDCG@{m['k']}"):
        t.add_column(c, justify="left" if c == "ranking" else "right")
    t.add_row(f"CF ({m['cf_model']})", f"{m['cf']['hr']:.4f}", f"{m['cf']['ndcg']:.4f}")
    t.add_row(f"CF + rerank ({m['method']})", f"{m['rerank']['hr']:.4f}", f"{m['rerank']['ndcg']:.4f}")
    console.print(t)
    console.print(f"{m['users']:,} users, top {m['k']} of {m['candidates']} CF candidates; users with a positive "
                  f"among the candidates (HR ceiling): {m['in_candidates']:.4f}")


@app.command("experiment")
def experiment_cmd(
    config: Path = typer.Argument(..., help="Experiment YAML (see experiments/)."),
    only: list[str] | None = typer.Option(None, "--only", help="Run only the row(s) with this name."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild results.md and plots from finished rows."),
    device: str | None = typer.Option(None, "--device", help="Train and score the LLM rows here (cpu, cuda, "
                                         "cuda:N, auto) instead of the file's llm.device. Where a row ran is "
                                         "recorded, not compared: rows of one table may come from several devices."),
    tf32: bool = typer.Option(False, "--tf32", help="With a CUDA --device: fp32 matrix products on TF32 tensor "
                              "cores (recorded in each run's config.yaml and the table)."),
    backbone: str | None = typer.Option(None, "--backbone", help="The LLM rows' backbone instead of the file's "
                                        "llm.backbone (e.g. a local folder for the file's hub id); a setting: "
                                        "recorded, and a run trained with another backbone is not resumed."),
    dtype: str | None = typer.Option(None, "--dtype", help="The LLM rows' precision (fp32 | bf16 | fp16) instead "
                                     "of the file's llm.dtype; rows that name their own dtype keep it."),
    jobs: int | None = typer.Option(None, "--jobs", min=1, help="Run this many trainings at once, each in its own process "
                             "(a training starts when its CF model and stage donor have finished; logs in "
                             "<out>/logs/). On one GPU several small-model trainings fill each other's gaps."),
    source: Path | None = typer.Option(None, "--source", help="A local copy of the data the file's `source` "
                                       "names (e.g. collm-ml-1m.zip), instead of downloading it."),
    gpus: str | None = typer.Option(None, "--gpus", metavar="IDS", help="With --jobs: give each worker its own "
                                    "GPU from this list (its CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3; list an id twice "
                                    "to let two workers share it. --jobs defaults to the list's length."),
    deadline_min: float | None = typer.Option(None, "--deadline-min", min=0.1, help="With --jobs: stop the "
                                                 "trainings still running after this many minutes (they resume "
                                                 "from their last checkpoint next time), then write the results."),
    status: bool = typer.Option(False, "--status", help="Say where each training stands (finished, committed, "
                                "training: stage, step, best valid, last checkpoint, samples/s, time to the step "
                                "cap at most) from the run folders; trains nothing, writes nothing."),
    task: str | None = typer.Option(None, "--task", hidden=True, help="One training only (a --jobs worker): "
                                       "'cf:KEY', 'ROW' or 'ROW#SEED'; writes no results."),
) -> None:
    """Run every row of an experiment (resuming finished and interrupted rows), then write
    results.md, results.json (every AUC / UAUC with a 95 % user-bootstrap interval, each row's
    difference to the YAML's `reference:` row, `seeds:` rows as mean and sd over seeds), the plots
    and predictions/ (each row's test predictions: 'cora report --predictions OUT/predictions')."""
    from cora.experiment.command import run_command

    run_command(config, only=only, report_only=report_only, device=device, tf32=tf32, jobs=jobs,
                deadline_min=deadline_min, status=status, task=task, backbone=backbone, dtype=dtype, gpus=gpus,
                source=source)


@app.command("report")
def report_cmd(
    runs: list[Path] | None = typer.Argument(None, help="Run folders (CF or LLM) to compare."),
    split: str = typer.Option("test", help="Metrics key: test, valid, or e.g. test-limit2000."),
    predictions: list[Path] | None = typer.Option(
        None, "--predictions", help="Instead of run folders: predictions parquet files (uid, iid, label, score, "
        "not_cold) or folders of them, e.g. an experiment's <out>/predictions/. Table, intervals and differences "
        "are recomputed from these files alone. A row is named by the file (NAME-seedN.parquet: seed N of row "
        "NAME); files an experiment wrote carry their row's name, seed and order."),
    reference: str | None = typer.Option(None, "--reference", help="Row the differences are taken to (a row "
                                            "name or run folder; default: the first CoRA row, else the first)."),
    resamples: int = typer.Option(1000, "--resamples", min=1000, help="Bootstrap resamples of the test users."),
    bootstrap_seed: int = typer.Option(0, "--bootstrap-seed", help="Seed of the bootstrap resamples."),
    out: Path | None = typer.Option(None, "--out", help="Also write the table as Markdown here."),
    plot: list[str] | None = typer.Option(None, "--plot", help="Also draw: warm_cold, text_vs_id, modules "
                                             "(PNG beside --out, or in the current folder)."),
) -> None:
    """Print one table comparing runs on the same test rows (AUC, UAUC, warm, cold), each number
    with the 95 % interval of a user-level paired bootstrap (resampled test users, the same
    resamples for every row) and the reference minus each row [95 % interval] with its one-sided
    bootstrap p-value (the share of resamples where that difference is <= 0); a warning line where
    a metric rests on fewer than 30 test users. Rows scored on different test rows are refused."""
    from rich.measure import Measurement
    from rich.table import Table

    from cora.eval.plots import PLOTS
    from cora.eval.report import (
        build_report,
        interval_note,
        markdown_table,
        small_sample_warning,
        table_cells,
        table_columns,
        verdict_table,
    )
    from cora.io import atomic_path

    check_options(bootstrap_seed=bootstrap_seed)
    if bad := [name for name in plot or [] if name not in PLOTS]:
        raise CoraError(f"unknown plot '{bad[0]}' (choose from {', '.join(PLOTS)})")
    rows, meta = build_report(runs, predictions, split, reference=reference, resamples=resamples,
                              seed=bootstrap_seed)
    # Files copied by `cora experiment` record the test rows they score (e.g. test-limit2000-per10).
    splits = {r.get("split") for r in rows}
    label = split if runs else (splits.pop() if len(splits) == 1 and None not in splits else "predictions")
    seeded = any("seeds" in r for r in rows)
    t = Table(title=f"split: {label}", caption=interval_note(meta, seeded), caption_justify="left")
    for c in table_columns(label, meta, seeded):
        t.add_column(c, justify="left" if c.startswith("method") else "right", no_wrap=True)
    for r in rows:
        t.add_row(*table_cells(r, meta, seeded))
    # Cells like "0.7012 ± 0.0180" are unreadable once wrapped: print the table at its full width.
    full = Measurement.get(console, console.options.update_width(10_000), t).maximum
    Console(width=max(console.width, full)).print(t)
    if warning := small_sample_warning(meta):
        console.print(warning, style="yellow", highlight=False, soft_wrap=True)
    if out:
        with atomic_path(out) as tmp:
            verdicts = verdict_table(rows, meta)
            Path(tmp).write_text(markdown_table(rows, label, meta) + ("\n" + verdicts if verdicts else ""))
    for name in plot or []:
        path = (out.parent if out else Path(".")) / f"{name}.png"
        PLOTS[name](rows, path)
        console.print(f"wrote {path}")


@app.command("probe")
def probe_cmd(
    runs: list[Path] | None = typer.Argument(None, help="LLM run folders (none: the --backbone alone)."),
    backbone: str | None = typer.Option(None, "--backbone", help="The frozen-backbone row (default: the first "
                                           "run's backbone)."),
    data: Path | None = typer.Option(None, "--data", help="Dataset whose items are asked about (default: the "
                                        "first run's)."),
    movies: Path | None = typer.Option(None, "--movies", help="GroupLens movies.dat: genres joined by exact title "
                                          "(datasets without genres, e.g. the CoLLM import); alone: its movies."),
    n: int = typer.Option(300, "--n", help="Questions per task."),
    seed: int = typer.Option(0, "--seed", help="Seed of the questions, the CoRA pair and the bootstrap."),
    batch_size: int = typer.Option(8, "--batch-size", help="Questions (each with its 4 choices) per forward pass."),
    resamples: int = typer.Option(1000, "--resamples", help="Bootstrap resamples of the questions (>= 1000)."),
    out: Path = typer.Option(Path("probe"), "--out", help="Folder for probe.md, probe.png, probe.json, questions.json."),
    device: str | None = typer.Option(None, "--device", help="Where every row computes (cpu, cuda, cuda:N, auto; "
                                      "default: each run where it trained, the frozen row as the first run)."),
    dtype: str | None = typer.Option(None, "--dtype", help="fp32 | bf16 | fp16 for every row (default: each run's "
                                     "own, the frozen row the first run's)."),
) -> None:
    """Knowledge probe (the paper's Fig. 1): 4-choice questions on the items' years, genres and
    title matching, scored by log-likelihood on the frozen backbone and on each run's LLM (CoRA:
    without and with one pair's weights); accuracy with a 95 % question-bootstrap interval."""
    from rich.markup import escape
    from rich.measure import Measurement
    from rich.table import Table

    from cora.probe.report import headers, table_rows
    from cora.probe.run import run_probe

    result = run_probe(runs or [], backbone=backbone, data=data, movies=movies, n=n, seed=seed,
                       batch_size=batch_size, resamples=resamples, out=out, device=device, dtype=dtype,
                       log=lambda line: err_console.print(line, highlight=False, markup=False, soft_wrap=True))
    t = Table(title=f"knowledge probe -> {out}", caption="accuracy [95 % question bootstrap]; chance 0.25",
              caption_justify="left")
    for k, c in enumerate(headers(result["rows"])):
        t.add_column(c, justify="left" if k == 0 else "right", no_wrap=True)
    for cells in table_rows(result["rows"]):
        t.add_row(*map(escape, cells))  # "[0.57, 0.68]" is text, not rich markup
    # Cells like "0.633 [0.467, 0.800]" are unreadable once cut: print the table at its full width.
    full = Measurement.get(console, console.options.update_width(10_000), t).maximum
    Console(width=max(console.width, full)).print(t)
    console.print(f"wrote {out / 'probe.md'}, {out / 'probe.png'}, {out / 'probe.json'}")


# ----------------------------------------------------------------------------- serving
def _device_option():
    return typer.Option(None, "--device", help="Score here (cpu, cuda, cuda:N, auto) instead of where the run "
                        "trained; a GPU run scores on the CPU of a machine without CUDA.")


def _dtype_option():
    return typer.Option(None, "--dtype", help="fp32 | bf16 | bf16-mixed | fp16 | int8 instead of the run's "
                        "precision (on a CPU without bf16 / fp16 matrix units: fp32, said in one line; bf16-mixed: "
                        "fp32 weights, bf16 matrix products; int8: dynamic quantisation of the frozen linears, "
                        "CPU only).")


def _threads_option():
    return typer.Option(None, "--threads", help="CPU threads for torch (default: the CPUs this process may use).")


def _placement(device: str | None, dtype: str | None, threads: int | None):
    from cora.serve.placement import Placement

    return Placement(device=device, dtype=dtype, threads=threads)


def cpu_beside_gpu_note(device: str, dtype: str, device_given: bool) -> str | None:
    """A CPU run on a machine with CUDA, by default rather than by choice, is said in one line."""
    import torch

    if device_given or device != "cpu" or not torch.cuda.is_available():
        return None
    return (f"this machine has CUDA ({torch.cuda.get_device_name(0)}) but the run trains on the CPU in {dtype} "
            "(the default): pass --device cuda (and --dtype bf16) to use it")


def _say(line: str) -> None:
    err_console.print(f"note: {_one_line(line)}", highlight=False, markup=False, soft_wrap=True)


@app.command("recommend")
def recommend_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    user: str = typer.Option(..., "--user", help="User id: the dataset's own (its users.parquet), or cora's "
                             "with --internal-ids."),
    k: int = typer.Option(10, "--k", help="Items to recommend."),
    candidates: int = typer.Option(100, "--candidates", help="Unseen items the CF model retrieves for reranking."),
    cf: Path | None = typer.Option(None, "--cf", help="CF run for retrieval (runs of methods without one, e.g. ICL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    internal_ids: bool = typer.Option(False, "--internal-ids", help="--user is cora's internal id; the output "
                                      "adds internal ids (uid, iid)."),
    device: str | None = _device_option(),
    dtype: str | None = _dtype_option(),
    threads: int | None = _threads_option(),
) -> None:
    """Top-k items for a user: CF retrieves unseen candidates, the run's LLM method reranks them."""
    from cora.serve.catalog import check_k
    from cora.serve.preflight import RunData

    check_options(k=k, candidates=candidates)
    if internal_ids:
        from cora.serve.ids import internal_id

        check_options(user=internal_id("user", user))
    check_k(k, candidates)
    data = RunData.open(run)
    uid = data.user(user, internal=internal_ids)  # an unknown id fails here, before the (slow) model loads
    rec = data.recommender(cf=cf, placement=_placement(device, dtype, threads), say=_say)
    items = rec.recommend(uid, k=k, candidates=candidates, show_progress=True)  # a bar on stderr while it scores
    original = rec.ids.users.original(uid)
    if as_json:
        from cora.serve.recommend import recommendation_answer

        print(json.dumps(recommendation_answer(rec, uid, items, internal_ids), indent=2))
        return
    from rich.markup import escape
    from rich.table import Table

    from cora.serve.ids import shown

    source = items[0].retrieved_by if items else "cf"
    name = f"user {shown(original)}" + (f" (uid {uid})" if internal_ids else "")
    why = "" if source == "cf" else f" ({name} has no training rows: its CF vector is untrained)"
    t = Table(title=escape(f"{name}: top {k} of {candidates} {'CF' if source == 'cf' else 'most popular'} "
                           f"candidates reranked by {rec.cfg.method} ({run}){why}"))
    columns = ["rank", "item", *(["iid"] if internal_ids else []), "title", "probability",
               "CF score" if source == "cf" else "train positives"]
    for c in columns:
        t.add_column(c, justify="left" if c == "title" else "right")
    for r in items:
        t.add_row(str(r.rank), escape(str(rec.ids.items.original(r.item))), *([str(r.item)] if internal_ids else []),
                  escape(r.title), f"{r.probability:.4f}",
                  f"{r.cf_score:.4f}" if r.cf_score is not None else str(r.train_positives))
    console.print(t)


@app.command("score")
def score_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    pairs: Path = typer.Option(..., "--pairs", help="csv, tsv or parquet with a user and an item column, named as "
                               "for 'cora data import-interactions' (user,item / userId,movieId / ...)."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write: user, item, title, score (logit), probability."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Pairs per forward pass (the run's eval batch size)."),
    user_col: str | None = typer.Option(None, "--user", metavar="COL", help="User column (default: detected)."),
    item_col: str | None = typer.Option(None, "--item", metavar="COL", help="Item column (default: detected)."),
    fmt: str | None = typer.Option(None, "--format", help="csv | tsv | parquet (default: by file name; csv "
                                      "for other names)."),
    internal_ids: bool = typer.Option(False, "--internal-ids", help="The file holds cora's internal ids; the "
                                      "output adds them (uid, iid)."),
    device: str | None = _device_option(),
    dtype: str | None = _dtype_option(),
    threads: int | None = _threads_option(),
) -> None:
    """Score (user, item) pairs of a file, in the dataset's own ids, with a run's best weights."""
    from cora.serve.pairs import score_file

    check_options(batch_size=batch_size)
    df = score_file(run, pairs, out, batch_size=batch_size, internal=internal_ids, user=user_col, item=item_col,
                    fmt=fmt, placement=_placement(device, dtype, threads), say=_say)
    console.print(f"scored {len(df):,} pairs -> {out}")


@app.command("serve")
def serve_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (the default: this machine only)."),
    port: int = typer.Option(8000, "--port", help="Port."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most pairs per forward pass."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long a batch waits for more requests."),
    queue_size: int = typer.Option(256, "--queue-size", help="Requests allowed to wait; beyond it: 503."),
    cf: Path | None = typer.Option(None, "--cf", help="CF run for /recommend (runs of methods without one)."),
    max_pairs: int = typer.Option(1024, "--max-pairs", help="Most pairs per /score request; beyond it: 422."),
    max_candidates: int = typer.Option(1000, "--max-candidates", help="Most candidates per /recommend request "
                                       "(prompts it costs); beyond it: 422."),
    request_timeout: float = typer.Option(120.0, "--request-timeout", help="Seconds a request may take, queue "
                                          "included; beyond it: 504 and the request is dropped."),
    max_body_bytes: int = typer.Option(1 << 20, "--max-body-bytes", help="Largest request body; beyond it: 413."),
    api_key_file: Path | None = typer.Option(None, "--api-key-file", help="File holding the API key every "
                                                "request but /health must send (Authorization: Bearer KEY); "
                                                "default: $CORA_API_KEY, else none."),
    show_paths: bool = typer.Option(False, "--show-paths", help="/info shows the run's and backbone's paths."),
    shutdown_grace: float = typer.Option(10.0, "--shutdown-grace",
                                         help="Seconds queued requests get after SIGTERM; the rest: 503."),
    device: str | None = _device_option(),
    dtype: str | None = _dtype_option(),
    threads: int | None = _threads_option(),
) -> None:
    """HTTP service: /score, /recommend, /info, /health (OpenAPI at /openapi.json, docs at /docs)."""
    import importlib.util

    # fastapi and uvicorn come with the `serve` extra, not with a plain install: say so in one
    # line instead of a ModuleNotFoundError from deep inside cora.serve.
    missing = [m for m in ("fastapi", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        raise CoraError(f"cora serve needs {' and '.join(missing)}: pip install 'cora-rec[serve]'")
    check_options(port=port, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size)
    from cora.serve.gates import read_api_key
    from cora.serve.server import check_serve_flags, exposure_warning, serve

    check_serve_flags(max_pairs=max_pairs, max_body_bytes=max_body_bytes, shutdown_grace=shutdown_grace,
                      max_candidates=max_candidates, request_timeout=request_timeout)
    api_key, key_source = read_api_key(api_key_file)
    if warning := exposure_warning(host, api_key):
        err_console.print(f"[bold yellow]warning:[/] {_one_line(warning)}", highlight=False, soft_wrap=True)
    elif api_key is not None:
        err_console.print(f"API key from {_one_line(key_source)}: requests need 'Authorization: Bearer <key>'",
                          highlight=False, soft_wrap=True)
    from cora.serve.app import create_app
    from cora.serve.preflight import RunData

    rec = RunData.open(run).recommender(cf=cf, placement=_placement(device, dtype, threads), say=_say)
    serve(create_app(rec, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size, max_pairs=max_pairs,
                     max_body_bytes=max_body_bytes, max_candidates=max_candidates, request_timeout_s=request_timeout,
                     api_key=api_key, show_paths=show_paths), host=host, port=port, grace_s=shutdown_grace)


def _print_metrics(metrics: dict, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in ("split", "n", "AUC", "UAUC", "warm AUC", "warm UAUC", "cold AUC", "cold UAUC"):
        t.add_column(c, justify="right")
    f = lambda x: "-" if x is None else f"{x:.4f}"
    for split, m in metrics.items():
        if not isinstance(m, dict) or "auc" not in m:
            continue
        t.add_row(split, f"{m['n']:,}", f(m["auc"]), f(m["uauc"]), f(m["warm"]["auc"]), f(m["warm"]["uauc"]),
                  f(m["cold"]["auc"]), f(m["cold"]["uauc"]))
    console.print(t)


def _print_version(value: bool) -> None:
    if value:
        from cora import DISTRIBUTION, __version__

        print(f"cora {__version__} ({DISTRIBUTION})")
        raise typer.Exit()


@app.callback()
def _global_options(
    debug: bool = typer.Option(False, "--debug", envvar="CORA_DEBUG",
                               help="Show the full traceback of an unexpected error (or set CORA_DEBUG=1)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the installed version and exit."),
) -> None:
    global _debug
    _debug = debug


_debug = False


def _debugging() -> bool:
    # The env var also covers errors raised before the callback has run.
    return _debug or os.environ.get("CORA_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


def _click_classes(name: str) -> tuple[type, ...]:
    """Click's exception class ``name``, and typer's copy of it (typer >= 0.2x vendors click)."""
    import importlib

    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _one_line(text: object) -> str:
    """A message as one line (whole: the CLI shows what it is given), its brackets escaped
    (rows[0], [lora] are text, not rich markup)."""
    from rich.markup import escape

    return escape(one_line(text, limit=None))


def main() -> None:
    quiet_hf()  # one progress style, rich's: no tqdm bars from transformers / huggingface_hub
    try:
        app(standalone_mode=False)
    except CoraError as e:
        err_console.print(f"[bold red]error:[/] {_one_line(e)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as e:
        if isinstance(e, _click_classes("Exit")):
            sys.exit(e.exit_code)
        if isinstance(e, _click_classes("NoArgsIsHelpError")):  # plain `cora` / `cora data`: the help
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, _click_classes("UsageError")):  # a bad flag or value: one line, its own exit code
            where = e.ctx.command_path if e.ctx is not None else "cora"
            err_console.print(f"[bold red]error:[/] {_one_line(e.format_message())} (see '{where} --help')",
                              highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        if isinstance(e, _click_classes("ClickException")):
            err_console.print(f"[bold red]error:[/] {_one_line(e.format_message())}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        if _debugging():
            raise
        # The safety net: every bad input the project knows of is a CoraError above; what lands
        # here is a bug or a case nobody has met yet. tests/test_bad_input.py fails if a known
        # case ever reaches it.
        err_console.print(f"[bold red]{UNEXPECTED}:[/] {type(e).__name__}: {_one_line(str(e)[:300])} "
                          "(run with --debug or CORA_DEBUG=1 for the traceback)", highlight=False, soft_wrap=True)
        sys.exit(1)


UNEXPECTED = "unexpected error"


if __name__ == "__main__":
    main()

"""Command-line front end. Thin: every command calls a library function and prints its result.

User errors (:class:`cora.errors.CoraError`) become one red line and exit code 1.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from cora.errors import CoraError

app = typer.Typer(no_args_is_help=True, add_completion=False, help="CoRA: collaborative LoRA recommenders.")
data_app = typer.Typer(no_args_is_help=True, help="Get, import and prepare interaction data.")
download_app = typer.Typer(no_args_is_help=True, help="Download public datasets (sha256-checked).")
prepare_app = typer.Typer(no_args_is_help=True, help="Process raw dataset files into the cora layout.")
cf_app = typer.Typer(no_args_is_help=True, help="Collaborative-filtering models: MF, LightGCN, SASRec.")
app.add_typer(data_app, name="data")
data_app.add_typer(download_app, name="download")
data_app.add_typer(prepare_app, name="prepare")
app.add_typer(cf_app, name="cf")

console = Console()
err_console = Console(stderr=True)


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
    url: Optional[str] = typer.Option(None, help="Override the download URL (mirrors, tests)."),
    sha256: Optional[str] = typer.Option(None, help="Override the expected sha256."),
) -> None:
    """Download ML-1M (ml-1m.zip) from GroupLens and check its sha256."""
    from cora.data.download import download_movielens

    path = download_movielens(out, url=url, sha256=sha256)
    console.print(f"saved {path}")


@data_app.command("import-collm")
def data_import_collm(
    src: Path = typer.Argument(..., help="CoLLM-format zip or folder (train_ood2.pkl, valid_ood2.pkl, test_ood2.pkl)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to create."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Allow unpickling (runs code from the file)."),
    name: Optional[str] = typer.Option(None, help="Dataset name (default: from the file layout)."),
    domain: Optional[str] = typer.Option(None, help="Domain word for prompts: movies or books."),
    overwrite: bool = typer.Option(False, help="Replace an existing output folder."),
) -> None:
    """Import CoLLM / BinLLM / CoRA pickled splits into Parquet + meta.json."""
    from cora.data.collm_import import import_collm

    meta = import_collm(src, out, trust_pickle=trust_pickle, name=name, domain=domain, overwrite=overwrite)
    _print_meta(meta, out)


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
def cf_train(
    data: Path = typer.Option(..., "--data", help="Dataset folder."),
    model: str = typer.Option("mf", "--model", help="mf | lightgcn | sasrec"),
    out: Path = typer.Option(..., "--out", help="Run folder to create (or resume)."),
    epochs: Optional[int] = typer.Option(None, help="Maximum epochs."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the paper's for the model)."),
    wd: Optional[float] = typer.Option(None, help="L2 weight decay (default: the paper's)."),
    dim: Optional[int] = typer.Option(None, help="Embedding size (default 256)."),
    patience: Optional[int] = typer.Option(None, help="Stop after this many epochs without valid-AUC gain."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    sas_block: Optional[str] = typer.Option(None, "--sas-block",
                                            help="SASRec block: reference (default; the reference code's) | preln."),
    resume: bool = typer.Option(True, help="Resume an interrupted run in --out (default on)."),
) -> None:
    """Train a CF model with early stopping on full-valid AUC; writes a run folder."""
    from cora.cf.train import train_cf
    from cora.config import CFConfig

    overrides = {k: v for k, v in dict(epochs=epochs, lr=lr, weight_decay=wd, dim=dim, patience=patience,
                                       batch_size=batch_size, seed=seed, sas_block=sas_block).items()
                 if v is not None}
    cfg = CFConfig.for_model(model, data=str(data), **overrides)
    metrics = train_cf(cfg, out, resume=resume)
    _print_metrics(metrics, title=f"{model} -> {out}")


@cf_app.command("evaluate")
def cf_evaluate(
    run: Path = typer.Argument(..., help="CF run folder."),
    split: str = typer.Option("test", help="valid | test"),
    limit: Optional[int] = typer.Option(None, help="Score the same ~N-row whole-user sample as 'cora evaluate --limit N'."),
    per_user: Optional[int] = typer.Option(None, "--per-user", help="With --limit: at most N rows of each drawn user "
                                           "(spreads the sample over more users)."),
) -> None:
    """Recompute a split's metrics from the saved CF model."""
    from cora.cf.train import evaluate_cf_run

    _check_per_user(limit, per_user)
    metrics = evaluate_cf_run(run, split, limit, per_user)
    _print_metrics({split: metrics}, title=str(run))


# ----------------------------------------------------------------------------- LLM methods
@app.command("train")
def train_cmd(
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset folder."),
    cf: Optional[Path] = typer.Option(None, "--cf", help="CF run folder (CoRA, CoLLM, BinLLM)."),
    method: Optional[str] = typer.Option(None, "--method", help="cora | icl | prompt4nr | tallrec | personprompt | collm | binllm"),
    out: Path = typer.Option(..., "--out", help="Run folder to create."),
    backbone: Optional[str] = typer.Option(None, help="smollm2-135m (default), a HF folder, a .gguf file or a hub id."),
    modules: Optional[str] = typer.Option(None, help="Adapted modules: qkvo (default), qkvof, qkv, qko, qk."),
    rank: Optional[int] = typer.Option(None, help="Rank r of the collaborative weights (16)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size per step (8)."),
    bucket_window: Optional[int] = typer.Option(None, "--bucket-window",
                                                help="Length bucketing: sort by length within N batches (32; 1 = off)."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Gradient accumulation steps (1)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (1e-3)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Optimizer steps budget (2000)."),
    eval_every: Optional[int] = typer.Option(None, "--eval-every", help="Validate every N steps (100)."),
    patience: Optional[int] = typer.Option(None, help="Stop after N validations without gain (20)."),
    warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Linear warm-up steps (200)."),
    limit_train: Optional[int] = typer.Option(None, "--limit-train", help="Use N random training rows."),
    limit_valid: Optional[int] = typer.Option(None, "--limit-valid", help="Validate on ~N rows of whole users."),
    max_titles: Optional[int] = typer.Option(None, "--max-titles", help="History titles in the prompt (10)."),
    no_titles: Optional[bool] = typer.Option(None, "--no-titles/--titles", help="ID-only prompt ablation."),
    dtype: Optional[str] = typer.Option(None, help="fp32 | bf16 | fp16 (backbone compute dtype)."),
    device: Optional[str] = typer.Option(None, help="cpu | cuda | auto"),
    seed: Optional[int] = typer.Option(None, help="Random seed (42)."),
    soft_tokens: Optional[int] = typer.Option(None, "--soft-tokens", help="Prompt4NR: soft-prompt length (10)."),
    prompt_lora: Optional[bool] = typer.Option(None, "--prompt-lora/--no-prompt-lora",
                                               help="Prompt4NR / PersonPrompt: also tune a standard LoRA."),
    binllm_bits: Optional[int] = typer.Option(None, "--binllm-bits", help="BinLLM: bits per code (32)."),
    binllm_dot_decimal: Optional[bool] = typer.Option(None, "--binllm-dot-decimal/--binllm-binary",
                                                      help="BinLLM: codes as 8-bit numbers joined by '.' (off)."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML config; flags override its fields."),
    stage_from: list[str] = typer.Option([], "--stage-from", metavar="STAGE=RUN",
                                         help="Take a stage from a finished run instead of training it "
                                              "(CoLLM / BinLLM: lora=TALLREC_RUN / text=TALLREC_RUN)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
) -> None:
    """Train an LLM method (CoRA by default) with the one training loop; writes a run folder."""
    from cora.config import LLMConfig
    from cora.train.run import train_run

    base = LLMConfig.load(config).to_dict() if config else {}
    flags = dict(data=data, cf=cf, method=method, backbone=backbone, modules=modules, rank=rank,
                 batch_size=batch_size, grad_accum=grad_accum, lr=lr, max_steps=max_steps, eval_every=eval_every,
                 patience=patience, warmup_steps=warmup_steps, limit_train=limit_train, limit_valid=limit_valid,
                 max_titles=max_titles, no_titles=no_titles, dtype=dtype, device=device, seed=seed)
    flags.update(soft_tokens=soft_tokens, prompt_lora=prompt_lora, bucket_window=bucket_window)
    flags.update(binllm_bits=binllm_bits, binllm_dot_decimal=binllm_dot_decimal)
    base.update({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None})
    cfg = LLMConfig.from_dict(base, source=str(config or "flags"))
    if not cfg.data:
        raise CoraError("--data is required (or a 'data' field in --config)")
    if bad := [s for s in stage_from if "=" not in s]:
        raise CoraError(f"--stage-from {bad[0]}: write STAGE=RUN, e.g. lora=runs/tallrec")
    summary = train_run(cfg, out, resume=resume, stage_from=dict(s.split("=", 1) for s in stage_from))
    console.print_json(json.dumps(summary))


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    split: str = typer.Option("test", help="valid | valid_small | test"),
    limit: Optional[int] = typer.Option(None, help="Score ~N rows made of whole users (seeded)."),
    per_user: Optional[int] = typer.Option(None, "--per-user", help="With --limit: at most N rows of each drawn user "
                                           "(spreads the sample over more users)."),
    ranking: bool = typer.Option(False, "--ranking", help="Top-K instead: HR@K / NDCG@K of CF alone vs CF + "
                                 "rerank by the run (protocol: cora.serve.ranking)."),
    k: int = typer.Option(10, "--k", help="--ranking: length of the top list."),
    candidates: int = typer.Option(100, "--candidates", help="--ranking: unseen items CF retrieves per user."),
    limit_users: Optional[int] = typer.Option(None, "--limit-users", help="--ranking: a seeded sample of N users."),
    cf: Optional[Path] = typer.Option(None, "--cf", help="--ranking: CF run for retrieval (runs without one, e.g. ICL)."),
) -> None:
    """Score a split with a run's best weights; writes metrics.json and predictions-<split>.parquet.
    With --ranking: HR@K and NDCG@K of CF retrieval alone vs reranked by the run (metrics.json)."""
    if ranking:
        if limit is not None or per_user is not None:
            raise CoraError("--limit / --per-user are for AUC; with --ranking use --limit-users")
        from cora.serve.ranking import evaluate_ranking

        _print_ranking(evaluate_ranking(run, split, k, candidates, limit_users, cf=cf), title=str(run))
        return
    if limit_users is not None or cf is not None:
        raise CoraError("--limit-users and --cf go with --ranking")
    from cora.train.run import evaluate_run

    _check_per_user(limit, per_user)
    metrics = evaluate_run(run, split, limit, per_user=per_user)
    _print_metrics({split: metrics}, title=str(run))


def _check_per_user(limit: int | None, per_user: int | None) -> None:
    if per_user is not None and limit is None:
        raise CoraError("--per-user goes with --limit (it caps the rows per user of a limited sample)")


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
    only: Optional[list[str]] = typer.Option(None, "--only", help="Run only the row(s) with this name."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild results.md and plots from finished rows."),
) -> None:
    """Run every row of an experiment (resuming finished and interrupted rows), then write
    results.md, results.json and the plots."""
    from cora.train.experiment import Experiment, run_experiment, write_results

    exp = Experiment.load(config)
    results = write_results(exp) if report_only else run_experiment(exp, only)
    console.print((Path(exp.out) / "results.md").read_text())
    if results["missing"]:
        console.print(f"[yellow]not finished:[/] {', '.join(results['missing'])}")


@app.command("report")
def report_cmd(
    runs: list[Path] = typer.Argument(..., help="Run folders (CF or LLM) to compare."),
    split: str = typer.Option("test", help="Metrics key: test, valid, or e.g. test-limit2000."),
    out: Optional[Path] = typer.Option(None, "--out", help="Also write the table as Markdown here."),
    plot: Optional[list[str]] = typer.Option(None, "--plot", help="Also draw: warm_cold, text_vs_id, modules "
                                             "(PNG beside --out, or in the current folder)."),
) -> None:
    """Print one table comparing runs on the same split (AUC, UAUC, warm, cold)."""
    from rich.table import Table

    from cora.eval.report import markdown_table, report_rows
    from cora.io import atomic_path

    rows = report_rows(runs, split)
    t = Table(title=f"split: {split}")
    for c in ("method", "n", "AUC", "UAUC", "warm AUC", "warm UAUC", "cold AUC", "cold UAUC"):
        t.add_column(c, justify="left" if c == "method" else "right")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for r in rows:
        t.add_row(r["method"], f"{r['n']:,}", f(r["auc"]), f(r["uauc"]), f(r["warm_auc"]), f(r["warm_uauc"]),
                  f(r["cold_auc"]), f(r["cold_uauc"]))
    console.print(t)
    if out:
        with atomic_path(out) as tmp:
            Path(tmp).write_text(markdown_table(rows, split))
    if plot:
        from cora.eval.plots import PLOTS

        for name in plot:
            if name not in PLOTS:
                raise CoraError(f"unknown plot '{name}' (choose from {', '.join(PLOTS)})")
            path = (out.parent if out else Path(".")) / f"{name}.png"
            PLOTS[name](rows, path)
            console.print(f"wrote {path}")


# ----------------------------------------------------------------------------- serving
@app.command("recommend")
def recommend_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    user: int = typer.Option(..., "--user", help="User id."),
    k: int = typer.Option(10, "--k", help="Items to recommend."),
    candidates: int = typer.Option(100, "--candidates", help="Unseen items the CF model retrieves for reranking."),
    cf: Optional[Path] = typer.Option(None, "--cf", help="CF run for retrieval (runs of methods without one, e.g. ICL)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Top-k items for a user: CF retrieves unseen candidates, the run's LLM method reranks them."""
    from cora.serve.recommend import Recommender

    rec = Recommender.from_run(run, cf=cf)
    items = rec.recommend(user, k=k, candidates=candidates)
    if as_json:
        print(json.dumps({"user": user, "items": [r.to_dict() for r in items]}, indent=2))
        return
    from rich.table import Table

    source = items[0].retrieved_by if items else "cf"
    why = "" if source == "cf" else f" (user {user} has no training rows: its CF vector is untrained)"
    t = Table(title=f"user {user}: top {k} of {candidates} {'CF' if source == 'cf' else 'most popular'} "
                    f"candidates reranked by {rec.cfg.method} ({run}){why}")
    for c in ("rank", "item", "title", "probability", "CF score" if source == "cf" else "train positives"):
        t.add_column(c, justify="left" if c == "title" else "right")
    for r in items:
        t.add_row(str(r.rank), str(r.item), r.title, f"{r.probability:.4f}",
                  f"{r.cf_score:.4f}" if source == "cf" else f"{r.cf_score:.0f}")
    console.print(t)


@app.command("score")
def score_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    pairs: Path = typer.Option(..., "--pairs", help="CSV with columns user,item."),
    out: Path = typer.Option(..., "--out", help="Parquet file to write: user, item, score (logit), probability."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Pairs per forward pass (the run's eval batch size)."),
) -> None:
    """Score (user, item) pairs from a CSV with a run's best weights."""
    from cora.serve.pairs import score_file

    df = score_file(run, pairs, out, batch_size=batch_size)
    console.print(f"scored {len(df):,} pairs -> {out}")


@app.command("serve")
def serve_cmd(
    run: Path = typer.Argument(..., help="Run folder (from 'cora train')."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="Port."),
    max_batch: int = typer.Option(32, "--max-batch", help="Most pairs per forward pass."),
    max_wait_ms: float = typer.Option(10.0, "--max-wait-ms", help="How long a batch waits for more requests."),
    queue_size: int = typer.Option(256, "--queue-size", help="Requests allowed to wait; beyond it: 503."),
    cf: Optional[Path] = typer.Option(None, "--cf", help="CF run for /recommend (runs of methods without one)."),
) -> None:
    """HTTP service: /score, /recommend, /info, /health (OpenAPI at /openapi.json, docs at /docs)."""
    import uvicorn

    from cora.serve.app import create_app
    from cora.serve.recommend import Recommender

    if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
        raise CoraError("--max-batch and --queue-size must be >= 1 and --max-wait-ms >= 0")
    rec = Recommender.from_run(run, cf=cf)
    uvicorn.run(create_app(rec, max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size),
                host=host, port=port)


def _print_metrics(metrics: dict, title: str) -> None:
    from rich.table import Table

    t = Table(title=title)
    for c in ("split", "n", "AUC", "UAUC", "warm AUC", "warm UAUC", "cold AUC", "cold UAUC"):
        t.add_column(c, justify="right")
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    for split, m in metrics.items():
        if not isinstance(m, dict) or "auc" not in m:
            continue
        t.add_row(split, f"{m['n']:,}", f(m["auc"]), f(m["uauc"]), f(m["warm"]["auc"]), f(m["warm"]["uauc"]),
                  f(m["cold"]["auc"]), f(m["cold"]["uauc"]))
    console.print(t)


def main() -> None:
    try:
        app(standalone_mode=False)
    except CoraError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Exit):
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()

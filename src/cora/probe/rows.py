"""The models a probe compares, each as the LLM a method leaves for a plain text prompt.

* the frozen backbone;
* a run of a LoRA method (TALLRec, CoLLM, BinLLM, ...): ``method.llm``, whose adapters peft
  injected in place, so scoring it scores the fine-tuned LLM (CoLLM's ID tokens play no part in a
  text prompt; its stage-1 LoRA does);
* a CoRA run twice: with no pair weights set (the frozen backbone exactly, which the paper
  claims and the tests check bit for bit) and with the weights of one real (user, item) pair of
  its training data injected into every question.

Each run loads its own copy of its backbone (``load_run``), because methods wrap or inject into
the backbone's modules in place; a run is scored and dropped before the next one loads.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cora.llm.backbone import load_backbone
from cora.probe.questions import Question
from cora.probe.scoring import BatchContext, choice_logliks


@dataclass
class Row:
    name: str
    method: str  # "backbone" or the run's method
    source: str  # the backbone's name or the run folder
    detail: str = ""
    logliks: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (questions, choices)
    seconds: float = 0.0


def score_all(model, tokenizer, bos_token_id, questions: dict[str, list[Question]], batch_size: int,
              context: BatchContext | None = None) -> tuple[dict[str, np.ndarray], float]:
    t0 = time.perf_counter()
    out = {task: choice_logliks(model, tokenizer, bos_token_id, qs, batch_size, context)
           for task, qs in questions.items()}
    return out, time.perf_counter() - t0


def backbone_row(name: str, dtype: str, device: str, questions: dict[str, list[Question]], batch_size: int) -> Row:
    bb = load_backbone(name, dtype=dtype, device=device)
    logliks, seconds = score_all(bb.model, bb.tokenizer, bb.bos_token_id, questions, batch_size)
    del bb
    _free_memory()
    return Row(f"backbone ({Path(name).name or name})", "backbone", name, "frozen", logliks, seconds)


def run_rows(run: Path, questions: dict[str, list[Question]], batch_size: int, seed: int,
             device: str | None = None, dtype: str | None = None) -> list[Row]:
    from cora.methods.cora import CoRA
    from cora.train.run import load_run

    method, cfg, ds = load_run(run, device=device, dtype=dtype)
    tok, bos = method.tokenizer, method.bos_token_id
    label = f"{cfg.method} ({run.name})"
    rows = []
    if isinstance(method, CoRA):
        logliks, seconds = score_all(method.llm, tok, bos, questions, batch_size)
        rows.append(Row(f"{label}, no pair", cfg.method, str(run), "no pair weights: the frozen backbone", logliks,
                        seconds))
        weights, pair = pair_weights(method, ds, seed)
        logliks, seconds = score_all(method.llm, tok, bos, questions, batch_size, pair_context(method, weights))
        rows.append(Row(f"{label}, pair u{pair['uid']} i{pair['iid']}", cfg.method, str(run),
                        f"weights of user {pair['uid']}, item {pair['iid']} (train row {pair['row']})", logliks,
                        seconds))
    else:
        logliks, seconds = score_all(method.llm, tok, bos, questions, batch_size)
        rows.append(Row(label, cfg.method, str(run), "its LLM on a text prompt (LoRA active, if any)", logliks,
                        seconds))
    del method, ds
    _free_memory()
    return rows


def pair_weights(method, ds, seed: int) -> tuple[dict[int, torch.Tensor], dict]:
    """CoRA's A matrices (each (1, d_in, r)) for one seeded random training row of its dataset."""
    train = ds.split("train")
    row = int(np.random.default_rng(seed).integers(len(train)))
    enc = method.encode(train.iloc[[row]], ds.domain)
    device = next(method.llm.parameters()).device
    batch = {k: v.to(device) for k, v in method.collate(enc, [0]).items()}
    with torch.no_grad():
        weights = method.collaborative_weights(batch)
    pair = {"row": row, "uid": int(train["uid"].iloc[row]), "iid": int(train["iid"].iloc[row])}
    return weights, pair


def pair_context(method, weights: dict[int, torch.Tensor]) -> BatchContext:
    """The pair's A for every sequence of a batch: the adapter takes one A per sample (it checks
    the batch size), so the single pair's A is broadcast (expand: a view, no copy)."""
    def context(batch: int):
        return method.adapter.weights({w: a.expand(batch, -1, -1) for w, a in weights.items()})

    return context


def _free_memory() -> None:
    """After a model is dropped, before the next loads: two SmolLM2 copies are fine, seven 7B
    ones are not (the caller deletes its references; this collects their cycles)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()

"""Fixtures for LLM-method tests: a tiny dataset, a tiny MF run and a tiny backbone folder."""

from __future__ import annotations

from pathlib import Path

from cora.cf.train import train_cf
from cora.config import CFConfig, LLMConfig
from cora.data.store import write_dataset

from helpers import synthetic_splits
from tiny_models import tiny_backbone


def tiny_dataset(root: Path) -> Path:
    out = root / "data"
    if not out.exists():
        write_dataset(out, synthetic_splits(n_users=12, n_items=30), name="toy", domain="movies")
    return out


def tiny_cf_run(root: Path, model: str = "mf") -> Path:
    out = root / f"cf-{model}"
    if not (out / "model.safetensors").exists():
        cfg = CFConfig.for_model(model, data=str(tiny_dataset(root)), dim=8, epochs=3, patience=3, batch_size=64,
                                 max_len=5)
        train_cf(cfg, out, show_progress=False)
    return out


def tiny_backbone_folder(root: Path, kind: str = "llama") -> Path:
    out = root / f"backbone-{kind}"
    if not (out / "config.json").exists():
        bb = tiny_backbone(kind)
        bb.model.save_pretrained(out)
        bb.tokenizer.save_pretrained(out)
    return out


def tiny_config(root: Path, **overrides) -> LLMConfig:
    base = dict(data=str(tiny_dataset(root)), cf=str(tiny_cf_run(root)), backbone=str(tiny_backbone_folder(root)),
                method="cora", rank=4, alpha=8.0, gen_layers=1, gen_heads=2, gen_ffn=32, batch_size=4,
                eval_batch_size=8, max_steps=6, eval_every=2, warmup_steps=2, patience=10, lr=1e-2,
                limit_valid=40, seed=3)
    base.update(overrides)
    return LLMConfig(**base)


def first_batch(method, ds, n: int = 6, split: str = "valid") -> dict:
    """The first ``n`` rows of a split, encoded and collated by ``method``."""
    df = ds.split(split).iloc[:n]
    enc = method.encode(df, ds.domain)
    return method.collate(enc, list(range(len(enc))))

"""Each baseline is built with its reference implementation's settings (issue 15 sec. 1 and 2):
one table (config.LLM_DEFAULTS) applied to every new run, written into its config.yaml; the lr
horizon; stage-specific settings; Prompt4NR's slot soft prompt; CoRA's opt-in input normalisation."""

from __future__ import annotations

import json

import pytest
import torch

from cora.config import LLM_DEFAULTS, NEW_RUN_DEFAULTS, LLMConfig, method_defaults
from cora.errors import CoraError
from cora.io import read_yaml_mapping
from cora.llm.tokenize import slot_positions
from cora.methods import METHOD_NAMES as METHODS
from cora.train.run import build_method, train_run
from cora.train.schedule import warmup_cosine

from llm_fixtures import first_batch, tiny_cf_run, tiny_config

# DESIGN sec. 7b, restated here on purpose: a change to the table must be a change to this test.
REFERENCE = {
    ("cora", "mf"): dict(rank=16, alpha=32.0, batch_size=8, lr=1e-3, lr_horizon=100_000),
    ("cora", "lightgcn"): dict(rank=64, alpha=128.0, batch_size=16, lr=1e-3, lr_horizon=10_000),
    ("cora", "sasrec"): dict(rank=64, alpha=128.0, batch_size=16, lr=1e-3, lr_horizon=10_000),
    ("tallrec", None): dict(lora_rank=8, lora_alpha=16.0, lora_targets="qv", lora_dropout=0.05, batch_size=16,
                            lr=1e-3, lr_horizon=10_000),
    ("collm", "mf"): dict(batch_size=16, lr=1e-3, lr_horizon=10_000),
    ("prompt4nr", None): dict(soft_prompt="slots", soft_tokens=3, prompt_lora=True, lr=1e-4, batch_size=16),
    ("personprompt", None): dict(lr=1e-2, batch_size=16, prompt_lora=False),
    ("binllm", "mf"): dict(batch_size=16, lr=1e-3, stage_settings={"codes": {"lr": 1e-4, "batch_size": 4}}),
    ("icl", None): dict(),
}
LOOP = dict(warmup_start_lr=1e-5, warmup_steps=200, min_lr=8e-5, weight_decay=1e-3)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("reference")


def test_every_method_has_reference_settings_and_the_table_says_what_the_reference_does():
    assert set(METHODS) <= set(LLM_DEFAULTS)  # a new method must say its reference settings
    assert {m for m, _ in REFERENCE} == set(METHODS)
    for (method, cf_model), expected in REFERENCE.items():
        cfg = LLMConfig.for_method({"method": method}, cf_model=cf_model)
        got = {k: getattr(cfg, k) for k in expected}
        assert got == expected, (method, cf_model)
        assert {k: getattr(cfg, k) for k in LOOP} == LOOP
        assert cfg.calibrate_logit  # the CPU-budget deviation stays the default (docs/method.md)
        assert cfg.valid_per_user == 10  # new runs validate on <= 10 rows of each drawn user


def test_given_fields_win_over_the_table_and_a_resolved_config_is_left_alone():
    cfg = LLMConfig.for_method({"method": "cora", "rank": 8, "lr_horizon": 300}, cf_model="lightgcn")
    assert (cfg.rank, cfg.alpha, cfg.batch_size, cfg.lr_horizon) == (8, 128.0, 16, 300)
    old = LLMConfig(method="prompt4nr")  # a config.yaml written before the table: every field named
    assert LLMConfig.for_method(old.to_dict()) == old
    assert (old.soft_prompt, old.lr_horizon, old.valid_per_user) == ("prefix", None, None)  # what old fields meant
    assert method_defaults("nope") == NEW_RUN_DEFAULTS  # an unknown method: only what every new run gets


def test_the_cf_model_is_read_from_the_cf_run(root):
    cfg = LLMConfig.for_method({"method": "cora", "cf": str(tiny_cf_run(root, "lightgcn"))})
    assert (cfg.rank, cfg.batch_size) == (64, 16)
    cfg = LLMConfig.for_method({"method": "cora", "cf": str(tiny_cf_run(root, "mf"))})
    assert (cfg.rank, cfg.batch_size) == (16, 8)


def test_cli_train_writes_the_reference_settings_into_config_yaml(root, tmp_path):
    from typer.testing import CliRunner

    from cora.cli import app

    base = tiny_config(root).to_dict()
    partial = {k: base[k] for k in ("data", "backbone", "gen_layers", "gen_heads", "gen_ffn", "limit_valid", "seed")}
    partial.update(method="cora", cf=str(tiny_cf_run(root, "lightgcn")), max_steps=2, eval_every=2, warmup_steps=1)
    (tmp_path / "partial.yaml").write_text(json.dumps(partial))  # JSON is YAML
    out = tmp_path / "run"
    done = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "partial.yaml"), "--out", str(out)])
    assert done.exit_code == 0, done.output
    saved = read_yaml_mapping(out / "config.yaml")
    assert (saved["rank"], saved["alpha"], saved["batch_size"], saved["lr_horizon"]) == (64, 128.0, 16, 10_000)


def test_the_cosine_spans_the_horizon_not_max_steps():
    def lr_at(horizon: int, step: int) -> float:
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        sched = warmup_cosine(opt, 1e-3, 1e-5, 6, 8e-5, horizon)
        for _ in range(step):
            opt.step()
            sched.step()
        return sched.get_last_lr()[0]

    assert lr_at(60, 60) == pytest.approx(8e-5)  # the old schedule: min_lr at max_steps
    assert lr_at(10_000, 60) == pytest.approx(1e-3, rel=1e-3)  # the reference's: still at the peak
    assert lr_at(10_000, 3) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 3 / 6)  # warm-up unchanged


def test_a_run_trains_with_its_horizon(root, tmp_path):
    cfg = tiny_config(root, max_steps=4, eval_every=2, warmup_steps=1, lr_horizon=1000)
    train_run(cfg, tmp_path / "run", show_progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert lrs[-1] == pytest.approx(cfg.lr, rel=1e-4)  # with lr_horizon None it would be min_lr at step 4


def test_stage_settings_apply_to_their_stage_only(root, tmp_path):
    cfg = tiny_config(root, method="binllm", max_steps=2, eval_every=2, warmup_steps=1, lr_horizon=1000,
                      stage_settings={"codes": {"lr": 1e-4, "batch_size": 2}})
    assert cfg.for_stage("codes").lr == 1e-4 and cfg.for_stage("text").lr == cfg.lr
    train_run(cfg, tmp_path / "bin", show_progress=False)
    lr = lambda stage: json.loads((tmp_path / "bin" / stage / "log.jsonl").read_text().splitlines()[-1])["lr"]  # noqa: E731
    assert lr("stage-1-text") == pytest.approx(cfg.lr, rel=1e-4)
    assert lr("stage-2-codes") == pytest.approx(1e-4, rel=1e-4)
    with pytest.raises(CoraError, match="only loop settings"):
        cfg.__class__(**{**cfg.to_dict(), "stage_settings": {"codes": {"rank": 3}}}).for_stage("codes")
    with pytest.raises(CoraError, match="no stage mapping"):
        train_run(tiny_config(root, method="binllm", stage_settings={"mapping": {"lr": 1e-4}}), tmp_path / "x",
                  show_progress=False)


def test_a_stage_is_taken_from_a_donor_when_only_the_consuming_stage_differs(root, tmp_path):
    common = dict(max_steps=2, eval_every=2, warmup_steps=1, lr_horizon=1000)
    donor = tmp_path / "tallrec"
    train_run(tiny_config(root, method="tallrec", **common), donor, show_progress=False)
    cfg = tiny_config(root, method="binllm", stage_settings={"codes": {"lr": 1e-4, "batch_size": 2}}, **common)
    summary = train_run(cfg, tmp_path / "bin", stage_from={"text": donor}, show_progress=False)
    assert summary["stages"]["text"]["reused_from"] == str(donor)
    # ... but not when the donated stage itself was trained otherwise.
    other = tiny_config(root, method="binllm", stage_settings={"text": {"lr": 1e-4}}, **common)
    with pytest.raises(CoraError, match="other settings for lr"):
        train_run(other, tmp_path / "bin2", stage_from={"text": donor}, show_progress=False)


def test_prompt4nr_slots_hold_three_vectors_per_id_and_train_with_lora(root):
    method, ds = build_method(tiny_config(root, method="prompt4nr", soft_prompt="slots", soft_tokens=3,
                                          prompt_lora=True))
    trainable = {n for n, p in method.named_parameters() if p.requires_grad}
    assert "slot_prompt" in trainable and any(".lora_A." in n for n in trainable)
    assert tuple(method.slot_prompt.shape) == (2, 3, 64)
    assert method.slot_prompt.abs().max() <= 1 / 2 ** 0.5  # nn.Linear(2, ...)'s init bound
    batch = first_batch(method, ds, n=4)
    assert batch["slot_offsets"].shape == (4, 6)
    text = method.tokenizer.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()])
    assert text.startswith("<s> # Question : <pad> . <pad> . <pad>") and "enjoy the movie ?" in text  # tiny vocab
    with torch.no_grad():
        embeds = method.embed_with_slots(batch)
    pos = slot_positions(batch["slot_offsets"], batch["attention_mask"])[0]
    assert torch.equal(embeds[0, pos[:3]], method.slot_prompt[0].detach())  # user slot: first
    assert torch.equal(embeds[0, pos[3:]], method.slot_prompt[1].detach())  # target-item slot
    assert (pos[1:3] - pos[:2] == 2).all()  # "<v>.<v>.<v>": one '.' token between the vectors


@pytest.mark.parametrize("norm", ["zscore", "layernorm"])
def test_cora_input_normalisation(root, norm):
    method, ds = build_method(tiny_config(root, input_norm=norm))
    train = ds.split("train")
    batch = method.collate(method.encode(train, ds.domain), list(range(len(train))))
    e = method.pair_embedding(batch)
    if norm == "zscore":  # every dimension standardised over the training pairs
        assert e.mean(0).abs().max() < 1e-4 and (e.std(0) - 1).abs().max() < 1e-3
    else:  # each of the user / item halves to zero mean, unit variance
        half = e.shape[1] // 2
        for part in (e[:, :half], e[:, half:]):
            assert part.mean(1).abs().max() < 1e-4
    raw, _ = build_method(tiny_config(root))
    assert not torch.allclose(raw.pair_embedding(batch), e)
    with pytest.raises(CoraError, match="input_norm"):
        build_method(tiny_config(root, input_norm="batchnorm"))


def test_a_fixed_valid_seed_gives_every_seed_the_same_validation_rows(root, tmp_path):
    from cora.data.sampling import sample_users

    ds_rows = []
    for seed in (1, 2):
        cfg = tiny_config(root, seed=seed, limit_valid=20, valid_per_user=3, valid_seed=7)
        from cora.data.store import load_dataset

        df = sample_users(load_dataset(cfg.data).split("valid_small"), cfg.limit_valid, cfg.valid_seed,
                          per_user=cfg.valid_per_user)
        ds_rows.append(list(zip(df["uid"], df["iid"])))
        assert df.groupby("uid").size().max() <= 3
    assert ds_rows[0] == ds_rows[1]

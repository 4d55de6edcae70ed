"""The worked examples of docs/extending.md, run: a new method and a new backbone family.

The toy method below is the one the doc shows (a test checks the doc's code block is this class's
source, so the two cannot drift apart): the frozen LLM's Yes logit plus one trained bias. It is
registered the way the doc says (its line in the method registry, the ranges table's method
choices, LLM_DEFAULTS), trained 2 steps through ``train_run`` on the tiny fixtures, evaluated, and
removed again. The registry's own tests are here too: it agrees with every class, imports no torch.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cora.methods
from cora import ranges
from cora.config import LLM_DEFAULTS, LLMConfig
from cora.errors import CoraError
from cora.methods import METHOD_NAMES, REGISTRY, MethodSpec, method_class, method_classes
from cora.methods.base import LLMMethod
from cora.train.checkpoint import load_tensors
from cora.train.run import evaluate_run, load_run, train_run

from llm_fixtures import tiny_backbone_folder, tiny_config, tiny_dataset
from tiny_models import make_tokenizer

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


class YesBias(LLMMethod):
    """A toy method: the frozen LLM's Yes logit plus one trained bias."""

    name = "yesbias"

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)  # freezes the LLM; sets tokenizer, Yes token, logit_offset
        self.bias = nn.Parameter(torch.zeros(()))  # every tensor that requires grad is trained

    def forward(self, batch):
        return self.score(batch) + self.bias  # (batch,) Yes logits


@contextlib.contextmanager
def registered(cls, reference_settings: dict, **kind):
    """What the doc's file edits do, for the duration of a with-block: the method's registry line
    (src/cora/methods/__init__.py; ``kind``: uses_cf, stages), its name among the allowed methods
    (the ranges table) and its reference settings in LLM_DEFAULTS (src/cora/config.py)."""
    spec, names = ranges.RANGES["LLMConfig"]["method"], cora.methods.METHOD_NAMES
    REGISTRY[cls.name] = MethodSpec(cls.name, f"{cls.__module__}:{cls.__qualname__}", **kind)
    cora.methods.METHOD_NAMES = (*names, cls.name)
    ranges.RANGES["LLMConfig"]["method"] = ranges.Choice(*spec.choices, cls.name)
    LLM_DEFAULTS[cls.name] = reference_settings
    try:
        yield
    finally:
        del REGISTRY[cls.name], LLM_DEFAULTS[cls.name]
        cora.methods.METHOD_NAMES = names
        ranges.RANGES["LLMConfig"]["method"] = spec


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("extending")


def _doc_block(lang: str, after: str) -> str:
    """The first ```lang block of docs/extending.md after the line containing ``after``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(after)
    m = re.search(rf"^```{lang}\n(.*?)^```", text[start:], flags=re.S | re.M)
    assert m, f"{DOC}: no ```{lang} block after {after!r}"
    return m.group(1)


def test_the_doc_shows_this_class():
    assert _doc_block("python", "## A worked example: a new method") == inspect.getsource(YesBias)


def test_a_new_method_registered_trains_two_steps_evaluates_and_is_removed(root):
    data, backbone = str(tiny_dataset(root)), str(tiny_backbone_folder(root))
    fields = dict(data=data, backbone=backbone, method="yesbias", max_steps=2, eval_every=1, warmup_steps=1,
                  eval_batch_size=16, limit_valid=40, seed=3)
    with registered(YesBias, {"lr": 1e-2, "batch_size": 4}):
        cfg = LLMConfig.for_method(fields)
        assert (cfg.lr, cfg.batch_size, cfg.valid_per_user) == (1e-2, 4, 10)  # its reference settings applied
        out = root / "yesbias"
        summary = train_run(cfg, out, show_progress=False)
        assert summary["steps"] == 2
        saved = load_tensors(out / "model.safetensors")
        assert set(saved) == {"bias", "logit_offset"} and saved["bias"].item() != 0.0  # only the bias trained
        assert LLMConfig.load(out / "config.yaml").method == "yesbias"
        method, _, _ = load_run(out)
        assert isinstance(method, YesBias)
        metrics = evaluate_run(out, "test", show_progress=False)
        # A bias (and the logit offset) shifts every score by one constant: the ranking, and so
        # the AUC, is the frozen backbone's (ICL) on the same rows.
        icl = root / "icl"
        train_run(LLMConfig.for_method({**fields, "method": "icl"}), icl, show_progress=False)
        assert metrics["auc"] == pytest.approx(evaluate_run(icl, "test", show_progress=False)["auc"], abs=1e-3)
    assert "yesbias" not in REGISTRY and "yesbias" not in cora.methods.METHOD_NAMES
    assert "yesbias" not in method_classes() and "yesbias" not in LLM_DEFAULTS
    with pytest.raises(CoraError, match="method"):
        LLMConfig(method="yesbias")


def test_the_registry_agrees_with_every_class():
    """Each registry line (known without importing the method) says what its class says."""
    assert METHOD_NAMES == ("cora", "icl", "prompt4nr", "tallrec", "personprompt", "collm", "binllm")
    assert tuple(method_classes()) == METHOD_NAMES == tuple(REGISTRY)
    for name, spec in REGISTRY.items():
        cls = method_class(name)
        assert issubclass(cls, LLMMethod) and cls.name == spec.name == name
        assert cls.uses_cf == spec.uses_cf, name
        assert cls.stage_names == spec.stages, name
    with pytest.raises(CoraError, match="unknown method 'nope' \\(choose from binllm, collm, cora, icl"):
        method_class("nope")


def test_the_registry_imports_no_torch_and_no_method_imports_another():
    code = ("import sys, cora.methods; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert not [m for m in sys.modules if m.startswith('cora.methods.')], 'a method imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    source = Path(cora.methods.__file__).parent
    methods = {spec.where.split(":")[0].rsplit(".", 1)[-1] for spec in REGISTRY.values()}
    for name in methods:
        imported = set(re.findall(r"^\s*(?:from|import) cora\.methods\.(\w+)", (source / f"{name}.py").read_text(),
                                  flags=re.M))
        assert not imported & methods, f"methods/{name}.py imports method module(s) {sorted(imported & methods)}"


def _tiny(cls, config_cls, **kw):
    tokenizer = make_tokenizer()
    ids = tokenizer.get_vocab()
    config = config_cls(vocab_size=len(tokenizer), pad_token_id=ids["<pad>"], bos_token_id=ids["<s>"],
                        eos_token_id=ids["</s>"], tie_word_embeddings=False, **kw)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls(config).eval()
    from cora.llm.backbone import make_backbone

    return make_backbone(model, tokenizer, f"tiny-{config.model_type}")


def tiny_mistral():
    """A family the test suite's tiny_models.py does not build: Mistral (Llama-shaped projections)."""
    from transformers import MistralConfig, MistralForCausalLM

    return _tiny(MistralForCausalLM, MistralConfig, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def test_a_family_that_meets_the_contract_needs_no_code(root):
    """The checklist of the doc, then CoRA (every module letter) and TALLRec trained on it."""
    from cora.llm.lowrank import parse_modules
    from cora.llm.scoring import yes_logits

    bb = tiny_mistral()
    linears = {n.rsplit(".", 1)[-1] for n, m in bb.model.named_modules() if isinstance(m, nn.Linear)}
    assert set(parse_modules("qkvof")) <= linears  # named projections, each an nn.Linear
    assert bb.yes_token_id != bb.no_token_id and bb.tokenizer.pad_token_id is not None  # answer and pad tokens
    assert bb.model.get_decoder() is not None and bb.model.get_output_embeddings() is not None
    ids = torch.tensor([[bb.bos_token_id, *bb.tokenizer.encode("Answer with Yes or No", add_special_tokens=False)]])
    assert torch.isfinite(yes_logits(bb.model, bb.yes_token_id, torch.ones_like(ids), input_ids=ids)).all()
    for method, extra in (("cora", {"modules": "qkvof"}), ("tallrec", {})):
        cfg = tiny_config(root, method=method, max_steps=2, eval_every=2, warmup_steps=1, **extra)
        out = root / f"mistral-{method}"
        assert train_run(cfg, out, backbone=tiny_mistral(), show_progress=False)["steps"] == 2
        metrics = evaluate_run(out, "test", backbone=tiny_mistral(), show_progress=False)  # a fresh copy: methods wrap modules in place
        assert 0.0 <= metrics["auc"] <= 1.0


def test_a_family_without_named_linear_projections_is_refused_by_name(root):
    """GPT-2 computes q, k, v in one fused Conv1D (c_attn): not what the adapters look for."""
    from transformers import GPT2Config, GPT2LMHeadModel

    bb = _tiny(GPT2LMHeadModel, GPT2Config, n_embd=64, n_layer=2, n_head=4, n_positions=512)
    cfg = tiny_config(root, max_steps=2)
    with pytest.raises(CoraError, match="no linear modules named q_proj"):
        train_run(cfg, root / "gpt2-cora", backbone=bb, show_progress=False)
    assert not (root / "gpt2-cora").exists()  # refused before anything was written

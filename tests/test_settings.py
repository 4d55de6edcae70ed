"""Each setting is declared once (cora.config: default, allowed values, help, kind); the range
table, the stage / placement sets and the command-line options derive from the declarations."""

from __future__ import annotations

import dataclasses
import re

import pytest
import typer.main

from cora import cli, config
from cora.config import CF_DEFAULTS, LLM_DEFAULTS, CFConfig, LLMConfig, method_defaults
from cora.methods import METHOD_NAMES
from cora.options import cli_fields, flag_of, option_help
from cora.ranges import KINDS, RANGES, Int, declarations, fields_of_kind, setting, undeclared_fields

from helpers import main_in_process

CONFIGS = [LLMConfig, CFConfig]


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_declared_with_range_help_and_kind(cls):
    assert undeclared_fields(cls) == []
    for name, f in declarations(cls).items():
        assert f.metadata["help"].strip(), f"{name}: no help text"
        assert f.metadata["kind"] in KINDS, name
    assert list(RANGES[cls.__name__]) == [f.name for f in dataclasses.fields(cls)]


def test_a_field_without_declaration_is_found():
    """The check above fails for a field written as a plain dataclass field (what removing a
    declaration leaves)."""
    @dataclasses.dataclass
    class Half:
        a: int = setting(1, Int(0), "declared")
        b: int = 2

    assert undeclared_fields(Half) == ["b"]
    assert list(declarations(Half)) == ["a"]


def test_stage_and_placement_sets_derive_from_the_kinds():
    assert config.PLACEMENT_FIELDS == {"device", "tf32", "checkpoint_every_min", "max_skipped_steps",
                                       "gradient_checkpointing", "report_to"}
    assert config.STAGE_FIELDS == fields_of_kind(LLMConfig, "loop")
    assert {"lr", "batch_size", "max_steps", "patience"} <= config.STAGE_FIELDS
    # What a stage may set by itself is only loop settings (BinLLM's codes stage: lr, batch).
    for method, settings in LLM_DEFAULTS.items():
        for stage, own in settings.get("stage_settings", {}).items():
            assert set(own) <= config.STAGE_FIELDS, (method, stage)


def _options(group: typer.Typer, name: str) -> dict:
    command = typer.main.get_command(group).commands[name]
    return {p.name: p for p in command.params if p.param_type_name == "option"}


@pytest.mark.parametrize("cls,group,name,skip", [(LLMConfig, cli.app, "train", ()),
                                                 (CFConfig, cli.cf_app, "train", ("model", "data"))],
                         ids=["cora train", "cora cf train"])
def test_every_option_agrees_with_its_declaration(cls, group, name, skip):
    options = _options(group, name)
    fields = cli_fields(cls, skip)
    assert set(fields) <= set(options), f"fields without an option: {set(fields) - set(options)}"
    for field in fields:
        opt, f = options[field], declarations(cls)[field]
        assert opt.help == option_help(cls, field)
        assert opt.help.startswith(f.metadata["help"])
        spelled = flag_of(cls, field).split("/")
        assert opt.opts == [spelled[0]] and opt.secondary_opts == spelled[1:], field
        assert opt.default is None  # not given = the method's reference setting, never a fixed value


def test_help_shows_the_true_default_of_every_method(monkeypatch, capsys):
    code, out, _ = main_in_process(monkeypatch, capsys, "train", "--help", columns=400)
    assert code == 0
    text = re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", out))
    assert "(per method: cora 8 (lightgcn / sasrec: 16), prompt4nr 16, tallrec 16, personprompt 16, collm 16, " \
           "binllm 16 (codes stage: 4); others 8)" in text
    assert "prompt4nr 0.0001, personprompt 0.01" in text
    assert "cora 16 (lightgcn / sasrec: 64)" in text  # --rank
    assert "(per method: prompt4nr 3; others 10)" in text  # --soft-tokens
    # Every reference setting of every method appears in its option's help.
    for method in METHOD_NAMES:
        for field, value in method_defaults(method).items():
            if field in cli_fields(LLMConfig):
                shown = {True: "on", False: "off"}.get(value, f"{value:g}" if isinstance(value, float) else str(value))
                assert shown in option_help(LLMConfig, field), (method, field)


def test_cf_help_shows_the_paper_default_of_every_model():
    for model, settings in CF_DEFAULTS.items():
        for field, value in settings.items():
            shown = f"{value:g}" if isinstance(value, float) else str(value)
            assert shown in option_help(CFConfig, field), (model, field)
    assert option_help(CFConfig, "weight_decay").endswith("(default 0.0001)")


def test_a_bad_generated_option_is_named_as_typed(monkeypatch, capsys, tmp_path):
    code, _, err = main_in_process(monkeypatch, capsys, "train", "--out", tmp_path / "r", "--lr", "-1")
    assert code == 1 and "--lr = -1.0: must be a number > 0 and <= 1" in err
    code, _, err = main_in_process(monkeypatch, capsys, "cf", "train", "--data", tmp_path, "--out", tmp_path / "c",
                                   "--wd", "2")
    assert code == 1 and "--wd = 2.0: must be a number from 0 to 1" in err

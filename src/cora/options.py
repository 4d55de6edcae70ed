"""Command-line options derived from the config declarations (:mod:`cora.config`).

Every scalar field of a config becomes one typer option of the commands that build that config:
its flag (``--field-name``, or the declaration's ``flag``), its help (the declaration's, plus
the true default of each method or CF model from the reference-settings tables) and its type.
Nothing here is restated per field, so an option cannot drift from its setting;
``tests/test_settings.py`` checks every option of ``cora train`` / ``cora cf train`` against the
declarations.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, Optional

import typer

from cora.ranges import declarations

_TYPES = (int, float, bool, str)


def cli_fields(cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    """The fields of ``cls`` that get an option: every declared scalar field (a dict is set through
    ``--config``) but ``skip`` (fields the command takes as its own options)."""
    return [name for name, f in declarations(cls).items()
            if f.metadata["spec"].type in _TYPES and name not in skip]


def flag_of(cls: type, name: str) -> str:
    """The option's declaration as typer takes it: '--batch-size', '--tf32/--no-tf32', ..."""
    f = declarations(cls)[name]
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    flag = "--" + name.replace("_", "-")
    return f"{flag}/--no-{flag[2:]}" if f.metadata["spec"].type is bool else flag


def typed_flag(cls: type, name: str) -> str:
    """How a user types the option with a value: the first spelling of :func:`flag_of`."""
    return flag_of(cls, name).split("/")[0]


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, float):
        return f"{v:g}"
    return "none" if v is None else str(v)


def default_note(cls: type, name: str) -> str:
    """The default of ``name`` as every new run gets it: one value, or the value of each method
    (LLMConfig: LLM_DEFAULTS, with the CF models and stages that change it) or CF model
    (CFConfig: CF_DEFAULTS)."""
    from cora.config import (
        CF_DEFAULTS,
        CF_MODELS,
        LLM_DEFAULTS,
        LLMConfig,
        method_defaults,
    )
    from cora.methods import METHOD_NAMES

    base = declarations(cls)[name].default
    if cls is LLMConfig:
        parts = []
        for method in METHOD_NAMES:
            own = method_defaults(method)
            text = _show(own.get(name, base))
            if variants := [cf for cf in CF_MODELS if name in LLM_DEFAULTS.get(f"{method}/{cf}", {})]:
                values = {_show(LLM_DEFAULTS[f"{method}/{cf}"][name]) for cf in variants}
                text += f" ({' / '.join(variants)}: {' / '.join(sorted(values))})"
            stages = [(stage, s[name]) for stage, s in own.get("stage_settings", {}).items() if name in s]
            text += "".join(f" ({stage} stage: {_show(v)})" for stage, v in stages)
            parts.append((method, text))
    else:
        parts = [(model, _show(CF_DEFAULTS[model].get(name, base))) for model in CF_MODELS]
    if len({text for _, text in parts}) == 1:
        return "" if parts[0][1] == "none" else f"(default {parts[0][1]})"
    # Only who differs from the field's default is named; the rest are "others".
    named = [(who, text) for who, text in parts if text != _show(base)]
    others = "" if len(named) == len(parts) else f"; others {_show(base)}"
    per = "method" if cls is LLMConfig else "model"
    return f"(per {per}: " + ", ".join(f"{who} {text}" for who, text in named) + others + ")"


def option_help(cls: type, name: str) -> str:
    note = default_note(cls, name)
    return declarations(cls)[name].metadata["help"] + (" " + note if note else "")


def _option_type(cls: type, name: str) -> Any:
    kind = declarations(cls)[name].metadata["spec"].type
    return Optional[kind]


def config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator of a typer command: adds one option per field of ``cls`` (:func:`cli_fields`),
    default None (= not given), and passes their values to the command as ``settings`` (a dict
    of field -> value or None)."""
    names = cli_fields(cls, skip)

    def decorate(command: Callable) -> Callable:
        sig = inspect.signature(command)
        hints = typing.get_type_hints(command)
        own = [p.replace(annotation=hints.get(p.name, p.annotation))
               for p in sig.parameters.values() if p.name != "settings"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_option_type(cls, name),
                                   default=typer.Option(None, *flag_of(cls, name).split(" "),
                                                        help=option_help(cls, name)))
                 for name in names]

        @functools.wraps(command)
        def wrapper(**kwargs):
            settings = {name: kwargs.pop(name) for name in names}
            return command(**kwargs, settings=settings)

        params = own + added
        wrapper.__signature__ = sig.replace(parameters=params)
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer reads the signature above, not the command's own
        return wrapper

    return decorate


def spelled_flags(cls: type) -> dict[str, str]:
    """Field -> the flag a user types, for error messages naming the flag (``--wd``)."""
    return {name: typed_flag(cls, name) for name in declarations(cls)}


__all__ = ["cli_fields", "config_options", "default_note", "flag_of", "option_help", "spelled_flags", "typed_flag"]

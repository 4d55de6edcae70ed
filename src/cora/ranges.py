"""Settings: how each is declared, and the allowed values checked by one function.

Every config field is declared once, where its dataclass is (:func:`setting` in
:mod:`cora.config`): its default, its allowed values (a :class:`Spec`), its help text and its kind
(:data:`KINDS`). The range table :data:`RANGES`, the stage and placement sets and the command-line
options (:mod:`cora.options`) derive from those declarations. Configs check their fields when they
are built (CLI flags, ``--config`` YAML, experiment rows, a run's config.yaml) and commands check
their options before they load anything, so a nonsensical value (a negative lr, batch 0, dtype
fp8, lr "fast") fails at once with one line naming the field and what is allowed, instead of as a
traceback from inside torch after minutes of loading. ``tests/test_settings.py`` fails when a
field has no declaration or a command-line option disagrees with one.

This module imports neither torch nor the configs: choices are spelled where they are declared.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from cora.errors import CoraError

SEED_MAX = 2**32 - 1  # numpy's legacy seeding (pandas' sample(random_state=...)) takes no more


@dataclass(frozen=True)
class Spec:
    """One setting's type and allowed values. ``lo`` / ``hi`` bound numbers (``*_open``: the bound
    itself is excluded); ``choices`` / ``pattern`` / ``letters`` restrict strings; ``optional``
    also allows None (null in YAML: "no limit", or a default computed elsewhere)."""

    type: type
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: tuple[str, ...] | None = None
    pattern: str | None = None  # a regular expression the whole string must match
    shown: str | None = None  # how ``pattern`` reads in a message
    letters: str | None = None  # a non-empty string of these letters (--modules qkvo)
    optional: bool = False

    def allowed(self) -> str:
        """What the message says is allowed: 'an integer >= 1', 'a number > 0 and <= 1', ..."""
        if self.type in (int, float):
            what = "an integer" if self.type is int else "a number"
            if self.lo is not None and self.hi is not None and not (self.lo_open or self.hi_open):
                text = f"{what} from {_num(self.lo)} to {_num(self.hi)}"
            else:
                bounds = [f"{'>' if self.lo_open else '>='} {_num(self.lo)}" if self.lo is not None else "",
                          f"{'<' if self.hi_open else '<='} {_num(self.hi)}" if self.hi is not None else ""]
                text = " and ".join([what + " " + bounds[0] if bounds[0] else what] + [b for b in bounds[1:] if b])
        elif self.choices is not None:
            text = "one of " + ", ".join(self.choices)
        elif self.pattern is not None:
            text = self.shown or f"text matching {self.pattern}"
        elif self.letters is not None:
            text = f"letters from {', '.join(self.letters)} (e.g. qkvo)"
        else:
            text = {bool: "true or false", str: "a string", dict: "a mapping", list: "a list"}[self.type]
        return text + (" (or null)" if self.optional else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def Int(lo: int | None = None, hi: int | None = None, optional: bool = False) -> Spec:
    return Spec(int, lo, hi, optional=optional)


def Float(lo: float | None = None, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          optional: bool = False) -> Spec:
    return Spec(float, lo, hi, lo_open, hi_open, optional=optional)


def Choice(*choices: str) -> Spec:
    return Spec(str, choices=choices)


BOOL, STR, OPT_STR, DICT, LIST = Spec(bool), Spec(str), Spec(str, optional=True), Spec(dict), Spec(list)
LR = Float(0, 1, lo_open=True)
DROPOUT = Float(0, 1, hi_open=True)  # 1 would drop everything
FRACTION = Float(0, 1)
POSITIVE = Int(1)

# Scope -> setting -> Spec. "LLMConfig" and "CFConfig" are filled from their declarations by
# :func:`declare` when cora.config is imported; the experiment file's top level and the options
# that are no config field are listed here.
RANGES: dict[str, dict[str, Spec]] = {
    "Experiment": {
        "name": STR, "data": STR, "out": STR, "rows": LIST, "budget": STR, "source": OPT_STR, "trust_pickle": BOOL,
        "test_limit": Int(1, optional=True),
        "test_per_user": Int(2, optional=True),  # UAUC needs both labels of a user
        "llm": DICT, "cf": DICT, "plots": LIST, "cf_root": OPT_STR, "results": OPT_STR, "reference": OPT_STR,
        "keep_cf": LIST, "cf_store": OPT_STR, "contrasts": LIST,
    },
    # Command-line options that are no config field (names as the flag, without dashes).
    "options": {
        "limit": POSITIVE, "per_user": Int(2), "k": POSITIVE, "candidates": POSITIVE, "limit_users": POSITIVE,
        "user": POSITIVE,  # ids start at 1; 0 is padding
        "batch_size": POSITIVE, "port": Int(0, 65535),  # 0: any free port
        "max_batch": POSITIVE,
        "max_wait_ms": Float(0, 60_000), "queue_size": POSITIVE,
        "seed": Int(0, SEED_MAX), "bootstrap_seed": Int(0, SEED_MAX),  # numpy's seed range
        "positive_threshold": Float(), "valid_small_frac": Float(0, 1, lo_open=True),
        "negatives": POSITIVE,  # import-interactions: sampled negatives per positive
    },
}


# What a setting is to the run, which decides what may differ between runs that share work:
KINDS = {
    "loop": "a training-loop setting; one stage of a staged method may set its own (stage_settings)",
    "stage": "part of what a stage computes: a stage is shared (stage_from) or resumed only when it agrees",
    "placement": "where the run computes and how often it saves: recorded, never compared",
    "method": "a method's own part (generator, MLP, codes, soft prompt): not part of a shared text stage",
}


def setting(default: Any = dataclasses.MISSING, spec: Spec | None = None, help: str = "", kind: str = "stage",
            flag: str | None = None, factory: Any = None) -> Any:
    """One config field's declaration: its default (``factory`` for a mutable one), allowed values,
    help text (the CLI option's help and the docs') and kind (:data:`KINDS`). ``flag`` spells
    the command-line option where it is not ``--field-name`` (e.g. ``--calibrate-logit/--raw-logit``)."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose from {', '.join(KINDS)}")
    meta = {"spec": spec, "help": help, "kind": kind, "flag": flag}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declarations(cls: type) -> dict[str, dataclasses.Field]:
    """The declared fields of a config dataclass, in declaration order (a field built without
    :func:`setting` is left out: tests/test_settings.py names it)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("spec") is not None}


def undeclared_fields(cls: type) -> list[str]:
    """Fields of a config dataclass written without :func:`setting` (no range, help or kind)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("spec") is None]


def declare(cls: type) -> type:
    """Class decorator: the dataclass's declarations become its scope of :data:`RANGES`."""
    RANGES[cls.__name__] = {name: f.metadata["spec"] for name, f in declarations(cls).items()}
    return cls


def fields_of_kind(cls: type, *kinds: str) -> frozenset[str]:
    """The names of ``cls``'s fields declared with one of ``kinds``."""
    return frozenset(name for name, f in declarations(cls).items() if f.metadata["kind"] in kinds)


def check_value(scope: str, name: str, value: Any, source: str | None = None, label: str | None = None) -> Any:
    """``value`` of setting ``name`` in ``scope`` (a key of :data:`RANGES`), converted where that is
    safe (an int or a YAML string such as "1e-3" for a float, a path for a string); anything else
    outside the table's range is a :class:`CoraError` naming ``source``, the setting and what is
    allowed. A name without an entry passes unchecked (the test of the table catches it)."""
    spec = RANGES[scope].get(name)  # the config scopes are filled when cora.config is imported
    if spec is None or (value is None and spec.optional):
        return value
    converted = _convert(spec, value)
    if converted is _BAD or not _within(spec, converted):
        label = label or f"field '{name}'"
        where = f"{source}: " if source else ""
        raise CoraError(f"{where}{label} = {_show(value)}: must be {spec.allowed()}")
    return converted


def check_fields(scope: str, values: dict, source: str) -> dict:
    """Every setting of ``values`` checked by :func:`check_value`; returns the converted values."""
    return {k: check_value(scope, k, v, source) for k, v in values.items()}


def check_flags(scope: str, flags: dict[str, Any], spelled: dict[str, str] | None = None) -> None:
    """Command-line flags (None = not given) of the settings of ``scope``, named as the user typed
    them: ``--batch-size``, or ``spelled[name]`` where the flag is spelled otherwise (``--wd``)."""
    for name, value in flags.items():
        if value is not None:
            flag = (spelled or {}).get(name) or "--" + name.replace("_", "-")
            check_value(scope, name, value, label=flag)


def check_options(**options: Any) -> None:
    """Command-line options that are no config field (``RANGES['options']``; None = not given)."""
    check_flags("options", options)


_BAD = object()


def _convert(spec: Spec, value: Any) -> Any:
    if isinstance(value, bool) and spec.type is not bool:  # True is an int to Python, not to a user
        return _BAD
    if spec.type is float:
        if isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return _BAD
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else _BAD
    if spec.type is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    return value if isinstance(value, spec.type) else _BAD


def _within(spec: Spec, v: Any) -> bool:
    if spec.type in (int, float):
        if v != v:  # NaN: no setting means "not a number", and every comparison with it is False
            return False
        if spec.lo is not None and (v < spec.lo or (spec.lo_open and v == spec.lo)):
            return False
        return spec.hi is None or not (v > spec.hi or (spec.hi_open and v == spec.hi))
    if spec.choices is not None:
        return v in spec.choices
    if spec.pattern is not None:
        return re.fullmatch(spec.pattern, v) is not None
    if spec.letters is not None:
        return bool(v.strip()) and set(v.strip().lower()) <= set(spec.letters)
    return True


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

"""LLM methods: what is trainable and how a batch becomes Yes logits. One registry, one loop.

This module is the registry and imports no torch: a config is checked (the method's name, whether
it needs a CF run, its stages) without loading model code. Each method lives in its own module,
``cora.methods.<name>``, imported on first use by :func:`method_class`. No method module imports
another; what several share is in ``base`` (``LLMMethod``, ``EncodedSplit``), ``slots`` (vectors
placed in a prompt), ``lora`` (the standard peft LoRA) and ``generator`` (CoRA's query generator).

Adding a method (the files to touch, with a worked example a test runs): docs/extending.md.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from cora.errors import CoraError


@dataclass(frozen=True)
class MethodSpec:
    """One registry line: what a method is, known without importing it (a test checks that these
    agree with the class)."""

    name: str  # the --method value (the class's ``name``)
    where: str  # "module:Class", imported by method_class
    uses_cf: bool = False  # needs a CF run (--cf): the class gets the frozen CF model
    stages: tuple[str, ...] = ()  # a staged method's stages, every one it may run, in order; () = one fit


REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("cora", "cora.methods.cora:CoRA", uses_cf=True),
    MethodSpec("icl", "cora.methods.icl:ICL"),
    # baselines without CF
    MethodSpec("prompt4nr", "cora.methods.prompt4nr:Prompt4NR"),
    MethodSpec("tallrec", "cora.methods.tallrec:TALLRec"),
    MethodSpec("personprompt", "cora.methods.personprompt:PersonPrompt"),
    # baselines fed by a CF run
    MethodSpec("collm", "cora.methods.collm:CoLLM", uses_cf=True, stages=("lora", "mapping")),
    MethodSpec("binllm", "cora.methods.binllm:BinLLM", uses_cf=True, stages=("text", "codes")),
)}
METHOD_NAMES: tuple[str, ...] = tuple(REGISTRY)


def method_spec(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise CoraError(f"unknown method '{name}' (choose from {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def method_class(name: str) -> type:
    """The class of method ``name``, its module imported now (with torch)."""
    module, _, attr = method_spec(name).where.partition(":")
    return getattr(importlib.import_module(module), attr)


def method_classes() -> dict[str, type]:
    """name -> class of every registered method, in registry order (imports them all)."""
    return {name: method_class(name) for name in REGISTRY}


def __getattr__(name: str):
    if name == "METHODS":  # ``from cora.methods import METHODS``: method_classes(), imported on access
        return method_classes()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["METHOD_NAMES", "REGISTRY", "MethodSpec", "method_class", "method_classes", "method_spec"]

"""LLM methods: what is trainable and how a batch becomes Yes logits. One registry, one loop.

Adding a method (the files to touch, with a worked example a test runs): docs/extending.md.
"""

from __future__ import annotations

from cora.errors import CoraError
from cora.methods.base import EncodedSplit, LLMMethod
from cora.methods.binllm import BinLLM
from cora.methods.collm import CoLLM
from cora.methods.cora import CoRA
from cora.methods.icl import ICL
from cora.methods.personprompt import PersonPrompt
from cora.methods.prompt4nr import Prompt4NR
from cora.methods.tallrec import TALLRec

METHODS: dict[str, type[LLMMethod]] = {m.name: m for m in (CoRA, ICL)}
METHODS.update({m.name: m for m in (Prompt4NR, TALLRec, PersonPrompt)})  # baselines without CF
METHODS.update({m.name: m for m in (CoLLM, BinLLM)})  # baselines fed by a CF run


def method_class(name: str) -> type[LLMMethod]:
    if name not in METHODS:
        raise CoraError(f"unknown method '{name}' (choose from {', '.join(sorted(METHODS))})")
    return METHODS[name]


__all__ = ["EncodedSplit", "LLMMethod", "CoRA", "ICL", "METHODS", "method_class"]
__all__ += ["Prompt4NR", "TALLRec", "PersonPrompt"]
__all__ += ["CoLLM", "BinLLM"]

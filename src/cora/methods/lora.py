"""The standard LoRA that several methods tune (TALLRec, CoLLM, BinLLM, and Prompt4NR /
PersonPrompt with ``prompt_lora``): a shared part, no method of its own.

The adapters are injected *in place* with ``peft.inject_adapter_in_model`` rather than
``get_peft_model``: the module tree stays a plain Hugging Face model, so the Yes/No scorer's
``get_decoder()`` / ``get_output_embeddings()`` and the parameter names work as on the bare
backbone. peft's init (``A`` Kaiming-uniform, ``B`` zero) makes step 0 exactly the frozen LLM.
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from cora.config import LLMConfig
from cora.errors import CoraError
from cora.llm.lowrank import parse_modules


def inject_lora(model: nn.Module, targets: str = "qv", rank: int = 8, alpha: float = 16.0,
                dropout: float = 0.05) -> list[LoraLayer]:
    """Add a LoRA adapter to every linear named by ``targets`` (letters as ``--modules``: q, k, v,
    o, f) and return the adapted layers. Only ``lora_A`` / ``lora_B`` require grad afterwards.
    They are kept in fp32 whatever the backbone's dtype: peft would create them in the
    backbone's dtype, and bf16 trainable weights lose small updates (peft casts the adapter's
    input to the adapter's dtype and the sum back to the layer's dtype)."""
    if rank < 1:
        raise CoraError(f"--lora-rank {rank}: must be at least 1")
    try:
        names = parse_modules(targets)
    except CoraError:
        raise CoraError(f"--lora-targets '{targets}': use letters from q, k, v, o, f (default qv)") from None
    present = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = sorted(set(names) - present)
    if missing:
        raise CoraError(f"this model has no {', '.join(missing)} modules for --lora-targets {targets}")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(names), bias="none")
    inject_adapter_in_model(config, model)
    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for layer in layers:
        layer.lora_A.float()
        layer.lora_B.float()
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return layers


class WithLoRA:
    """Mixin for LLM methods that tune a standard LoRA on their backbone (list it before the
    method base class). Keeps LoRA dropout active in training although the frozen backbone
    around it stays in eval mode (``LLMMethod.train`` puts the whole ``llm`` in eval)."""

    _lora_layers: list = []

    def add_lora(self, cfg: LLMConfig) -> None:
        # A plain list, not a ModuleList: the layers are registered once, inside the LLM.
        self._lora_layers = inject_lora(self.llm, cfg.lora_targets, cfg.lora_rank, cfg.lora_alpha,
                                        cfg.lora_dropout)
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        for layer in self._lora_layers:
            layer.lora_dropout.train(mode)
        return self

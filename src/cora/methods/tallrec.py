"""TALLRec (Bao et al. 2023): standard LoRA fine-tuning of the LLM on the plain text prompt.

One LoRA adapter (``A``, ``B`` shared by every sample) on the modules named by ``lora_targets``
(default q and v, rank 8, alpha 16, dropout ``lora_dropout`` 0.05: CoLLM's TALLRec settings,
which the CoRA paper reuses). Trainable: the LoRA ``A`` / ``B`` only. Frozen: the LLM. peft's
init (``A`` Kaiming-uniform, ``B`` zero) makes step 0 exactly the frozen LLM, i.e. ICL.

The LoRA itself (``inject_lora``, the :class:`WithLoRA` mixin) is in ``cora.methods.lora``,
shared with CoLLM, BinLLM, and Prompt4NR / PersonPrompt with ``prompt_lora``.
"""

from __future__ import annotations

from cora.config import LLMConfig
from cora.methods.base import LLMMethod
from cora.methods.lora import WithLoRA


class TALLRec(WithLoRA, LLMMethod):
    name = "tallrec"

    def __init__(self, backbone, cfg: LLMConfig):
        super().__init__(backbone, cfg)
        self.add_lora(cfg)

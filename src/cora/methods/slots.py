"""Methods whose prompt has vector slots: positions whose input embedding the method supplies.

Prompt4NR's soft prompt, PersonPrompt's user / item tokens and CoLLM's mapped CF embeddings are
vectors placed among the prompt's word embeddings, with the backbone itself untouched.
``encode`` stores each row's slot positions counted from the END of its token ids
(``slot_offsets``, negative; see ``cora.llm.slots``): prompts are left-padded, so in a batch of
width ``T`` a slot sits at ``T + offset`` whatever the padding. The slot's own token id is a
filler whose embedding is replaced.
"""

from __future__ import annotations

import torch

from cora.methods.base import LLMMethod


class SlotPromptMethod(LLMMethod):
    """Subclasses encode splits with ``slot_offsets`` (rows, n_slots) and give
    :meth:`slot_vectors`; the forward pass is shared."""

    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, n_slots, d_model), in the order of ``slot_offsets``."""
        raise NotImplementedError

    def embed_with_slots(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prompt's input embeddings with the slot positions replaced by :meth:`slot_vectors`."""
        embeds = self.llm.get_input_embeddings()(batch["input_ids"])
        positions = batch["slot_offsets"] + embeds.shape[1]
        index = positions.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])
        values = self.slot_vectors(batch).to(embeds.dtype)
        return embeds.scatter(1, index, values)  # out of place: gradients reach the vectors

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(batch, inputs_embeds=self.embed_with_slots(batch))

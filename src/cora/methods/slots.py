"""Methods whose prompt has vector slots: positions whose input embedding the method supplies.

Prompt4NR's soft prompt, PersonPrompt's user / item tokens and CoLLM's mapped CF embeddings are
vectors placed among the prompt's word embeddings, with the backbone itself untouched.
``encode`` stores each row's slot positions counted from the END of its token ids
(``slot_offsets``, negative; see ``cora.llm.slots``), so a slot sits at ``length + offset`` of its
row whatever the padding (:func:`cora.llm.tokenize.slot_positions`). The slot's own token id is a
filler whose embedding is replaced.

Shared by the slot methods (no method of its own): :class:`SlotPromptMethod`, the slot marker and
:func:`encode_id_slots`, CoLLM's prompt with one slot per ID (CoLLM, PersonPrompt).
"""

from __future__ import annotations

import pandas as pd
import torch

from cora.data.prompts import COLLM_TEMPLATE, build_prompt
from cora.llm.slots import tokenize_with_slots
from cora.llm.tokenize import slot_positions
from cora.methods.base import EncodedSplit, LLMMethod

# Written where an embedding goes (cora.llm.slots makes it ONE position); never reaches the model as text.
SLOT_MARKER = "<|cf-slot|>"


class SlotPromptMethod(LLMMethod):
    """Subclasses encode splits with ``slot_offsets`` (rows, n_slots) and give
    :meth:`slot_vectors`; the forward pass is shared."""

    def slot_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(batch, n_slots, d_model), in the order of ``slot_offsets``."""
        raise NotImplementedError

    def embed_with_slots(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prompt's input embeddings with the slot positions replaced by :meth:`slot_vectors`."""
        embeds = self.llm.get_input_embeddings()(batch["input_ids"])
        positions = slot_positions(batch["slot_offsets"], batch["attention_mask"])
        index = positions.unsqueeze(-1).expand(-1, -1, embeds.shape[-1])
        values = self.slot_vectors(batch).to(embeds.dtype)
        return embeds.scatter(1, index, values)  # out of place: gradients reach the vectors

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(batch, inputs_embeds=self.embed_with_slots(batch))


def encode_id_slots(method: SlotPromptMethod, df: pd.DataFrame, domain: str) -> EncodedSplit:
    """CoLLM's prompt with one vector slot for the user and one for the target item (also
    PersonPrompt's prompt: the two differ only in where the slot vectors come from)."""
    max_titles = 0 if method.cfg.no_titles else method.cfg.max_titles
    texts = [build_prompt(h, t, domain, max_titles, template=COLLM_TEMPLATE, id_only=method.cfg.id_only,
                          user_slot=SLOT_MARKER,
                          item_slot=SLOT_MARKER) for h, t in zip(df["his_title"], df["title"])]
    ids, slots = tokenize_with_slots(method.tokenizer, texts, SLOT_MARKER, 2, method.bos_token_id,
                                     method.pad_token_id, method.cfg.max_length)
    return method.make_split(df, ids, slot_offsets=torch.tensor(slots, dtype=torch.long).reshape(-1, 2))

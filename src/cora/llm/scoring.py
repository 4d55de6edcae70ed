"""Yes/No scoring: the logit of the "Yes" token at the last prompt position."""

from __future__ import annotations

import torch

from cora.llm.tokenize import last_positions


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only: 0, 1, ... from each row's first real token, so a
    prompt gets the same positions (and the same score) whatever padding its batch has (right
    padding: the plain arange over real tokens; left padding, as the probe's cached scoring
    uses: shifted past the pads)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def yes_logits(model, yes_token_id: int, attention_mask: torch.Tensor, input_ids: torch.Tensor | None = None,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(batch,) fp32 logits of the Yes token at each row's last real token (prompts are
    right-padded, :func:`cora.llm.tokenize.right_pad`).

    Only the Yes row of the LM head is applied, to the last hidden state only, in fp32: the full
    vocabulary projection of every position would be wasted work, and a bf16 logit would round
    scores to ~0.1 and create ties that distort AUC. (Final-logit soft-capping, as in Gemma 2, is
    monotone and skipped: it changes no ranking.)
    """
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                     position_ids=position_ids_for(attention_mask), use_cache=False).last_hidden_state
    hidden = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_positions(attention_mask).to(hidden.device)]
    head = model.get_output_embeddings()
    logit = hidden.float() @ head.weight[yes_token_id].float()
    if getattr(head, "bias", None) is not None:
        logit = logit + head.bias[yes_token_id].float()
    return logit

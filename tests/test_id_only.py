"""The paper's ID-only variants (Fig. 6, ``id_only``): no item text in any method's prompt, while
what a method puts in place of text (ID slots, codes, pair weights) stays."""

from __future__ import annotations

import pytest

from cora.data.prompts import COLLM_TEMPLATE, SOFT_PROMPT_TEMPLATE, TEMPLATE, build_prompt
from cora.train.run import build_method

from llm_fixtures import first_batch, tiny_config

METHODS = ["cora", "tallrec", "collm", "binllm", "personprompt", "prompt4nr"]


@pytest.mark.parametrize("template", [TEMPLATE, COLLM_TEMPLATE, SOFT_PROMPT_TEMPLATE])
def test_id_only_prompts_hold_no_item_text(template):
    his = ["", "Heat (1995)", "Casino (1995)"]
    fields = {"user_slot": "<U>", "item_slot": "<I>"} if template != TEMPLATE else {}
    text = build_prompt(his, "Toy Story (1995)", "movies", template=template, **fields)
    id_only = build_prompt(his, "Toy Story (1995)", "movies", template=template, id_only=True, **fields)
    assert "Heat" in text and "Toy Story" in text
    assert not any(t in id_only for t in ("Heat", "Casino", "Toy Story", "1995"))
    assert id_only.endswith('Answer with "Yes" or "No". \\n#Answer:')
    assert all(v in id_only for v in fields.values())  # the ID slots stay


@pytest.mark.parametrize("method", METHODS)
def test_every_method_encodes_id_only_prompts_without_titles(root, method):
    """Titles of the tiny data are 'Movie N' (capital M); the ID-only templates say 'movie(s)'."""
    decoded = {}
    for id_only in (False, True):
        m, ds = build_method(tiny_config(root, method=method, id_only=id_only))
        if method == "binllm":
            m.stage = "codes"
        batch = first_batch(m, ds)
        decoded[id_only] = [m.tokenizer.decode(row[row != m.pad_token_id]) for row in batch["input_ids"]]
    assert all("Movie" in t for t in decoded[False])
    assert not any("Movie" in t for t in decoded[True]), decoded[True][0]
    if method == "binllm":  # the codes stay as text
        assert all(sum(ch in "01" for ch in t) >= 2 * 32 for t in decoded[True])

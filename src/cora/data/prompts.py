"""Prompt text (DESIGN sec. 4 and 7), built from an interaction row. Knows no tokenizer.

The history is the (up to) 10 most recent positive titles, oldest first, each in double quotes,
joined by ", "; an empty history is written as a placeholder word; the target title is quoted.
The "\\n" before "#Answer:" is a literal backslash-n, as in the reference prompt file.
"""

from __future__ import annotations

MAX_HISTORY_TITLES = 10
EMPTY_HISTORY = "None"
SINGULAR = {"movies": "movie", "books": "book"}

TEMPLATE = (
    "#Question: A user has given high ratings to the following {domain}: {history}. "
    "Leverage the information to predict whether the user would enjoy the {item} titled {target}? "
    'Answer with "Yes" or "No". \\n#Answer:'
)
# Other methods' prompts: ``{user_slot}`` / ``{item_slot}`` are filled through build_prompt's fields.
# CoLLM's collm_movie.txt / collm_amazon.txt (CoLLM, PersonPrompt: vector slots; BinLLM: codes as text).
COLLM_TEMPLATE = (
    "#Question: A user has given high ratings to the following {domain}: {history}. "
    "Additionally, we have information about the user's preferences encoded in the feature {user_slot}. "
    "Using all available information, make a prediction about whether the user would enjoy the {item} "
    "titled {target} with the feature {item_slot}? "
    'Answer with "Yes" or "No". \\n#Answer:'
)
# CoLLM's softprompt.txt (Prompt4NR's ``slots`` layout).
SOFT_PROMPT_TEMPLATE = (
    "#Question: {user_slot} {history} [SEP] {item_slot} {target} [SEP] Using all available information, "
    'make a prediction about whether the user would enjoy the {item}? Answer with "Yes" or "No". \\n#Answer:'
)


# The paper's ID-only variants (Fig. 6: "only with ID embeddings, i.e. removing textual descriptions
# of items"): each template with every item text removed (no history titles, no target title);
# what a method puts in place of text stays (CoLLM / PersonPrompt: the ID slots, BinLLM: its codes,
# CoRA: the pair's weights, which need no prompt text at all).
TEMPLATE_ID_ONLY = (
    "#Question: A user has given high ratings to some {domain}. "
    "Predict whether the user would enjoy the target {item}? "
    'Answer with "Yes" or "No". \\n#Answer:'
)
COLLM_TEMPLATE_ID_ONLY = (
    "#Question: We have information about the user's preferences encoded in the feature {user_slot}. "
    "Using all available information, make a prediction about whether the user would enjoy the {item} "
    "with the feature {item_slot}? "
    'Answer with "Yes" or "No". \\n#Answer:'
)
SOFT_PROMPT_TEMPLATE_ID_ONLY = (
    "#Question: {user_slot} [SEP] {item_slot} [SEP] Using all available information, "
    'make a prediction about whether the user would enjoy the {item}? Answer with "Yes" or "No". \\n#Answer:'
)
ID_ONLY = {TEMPLATE: TEMPLATE_ID_ONLY, COLLM_TEMPLATE: COLLM_TEMPLATE_ID_ONLY,
           SOFT_PROMPT_TEMPLATE: SOFT_PROMPT_TEMPLATE_ID_ONLY}


def history_titles(his_title, max_titles: int = MAX_HISTORY_TITLES) -> list[str]:
    """The most recent ``max_titles`` titles of a history, oldest first, padding ('') removed."""
    titles = [t for t in his_title if t]
    return titles[-max_titles:] if max_titles > 0 else []


def quote(title: str) -> str:
    return f'"{title}"'


def build_prompt(his_title, title: str, domain: str = "movies", max_titles: int = MAX_HISTORY_TITLES,
                 template: str = TEMPLATE, id_only: bool = False, **fields) -> str:
    """The text prompt of one (user, target item) row. ``fields`` fill extra placeholders
    (other methods' templates, e.g. CoLLM's ``<UserID>`` slots). ``id_only``: the template's
    ID-only form (no item text at all: :data:`ID_ONLY`)."""
    if id_only:
        return ID_ONLY[template].format(domain=domain, item=SINGULAR.get(domain, "item"), **fields)
    titles = history_titles(his_title, max_titles)
    history = ", ".join(quote(t) for t in titles) if titles else EMPTY_HISTORY
    return template.format(domain=domain, item=SINGULAR.get(domain, "item"), history=history,
                           target=quote(title), **fields)

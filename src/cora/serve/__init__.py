"""Serving a trained run: CF retrieval + LLM reranking (:mod:`.recommend`), offline scoring of a
pairs file (:mod:`.pairs`), the HTTP service with micro-batching (:mod:`.app`), and offline
top-K evaluation of CF alone vs CF + rerank (:mod:`.ranking`).

Names are imported on first use, so ``cora score`` can reject a bad pairs file before torch and
the model stack load.
"""

_LAZY = {"Catalog": "cora.serve.catalog", "UnknownIdError": "cora.serve.catalog",
         "Recommendation": "cora.serve.recommend", "Recommender": "cora.serve.recommend",
         "evaluate_ranking": "cora.serve.ranking"}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cora.serve' has no attribute {name!r}")

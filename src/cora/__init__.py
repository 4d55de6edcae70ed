"""cora: collaborative information carried in an LLM recommender's weights (CoRA, AAAI 2025)."""

__version__ = "0.1.0"

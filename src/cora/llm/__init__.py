"""Backbone loading, per-sample low-rank injection, Yes/No scoring. Knows no method and no loop."""

"""Collaborative-filtering models behind one interface, and their one training loop."""

from cora.cf.models import CFModel, LightGCN, MatrixFactorization, SASRec, build_cf_model

__all__ = ["CFModel", "MatrixFactorization", "LightGCN", "SASRec", "build_cf_model"]

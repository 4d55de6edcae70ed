"""Model-free evaluation: metrics, reports and plots (never imports methods or train)."""

from cora.eval.metrics import auc, evaluate_predictions, uauc
from cora.eval.ranking import ranking_metrics

__all__ = ["auc", "evaluate_predictions", "ranking_metrics", "uauc"]

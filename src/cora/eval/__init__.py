"""Model-free evaluation: metrics, reports and plots (never imports methods or train)."""

from cora.eval.metrics import auc, evaluate_predictions, uauc

__all__ = ["auc", "uauc", "evaluate_predictions"]

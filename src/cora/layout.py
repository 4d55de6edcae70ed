"""A run folder's files, named once. LLM runs (cora.train.run) and CF runs (cora.cf.train) share
the names; experiments, reports, curves, status and serving read them through these.

RUN/config.yaml                    the resolved config: rebuilds the run
RUN/model.safetensors              best trainable tensors (CF: the model)
RUN/train_summary.json             LLM runs: steps, stop reason, wall time, samples/s, peak memory
RUN/metrics.json                   {split key: {n, auc, uauc, warm, cold}, ...}
RUN/log.jsonl                      LLM runs: one line per validation
RUN/checkpoint/                    last state for --resume (cora.train.checkpoint)
RUN/resume_changes.json            settings a resume was allowed to change (--allow-changed), at which step
RUN/predictions-<key>.parquet      uid, iid, label, score, not_cold of one scored split
"""

from __future__ import annotations

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
SUMMARY = "train_summary.json"
RESUME_CHANGES = "resume_changes.json"
METRICS = "metrics.json"
LOG = "log.jsonl"
CHECKPOINT = "checkpoint"


def predictions(key: str) -> str:
    """The predictions file of split key ``key`` (``test``, ``test-limit2000-per10``, ...)."""
    return f"predictions-{key}.parquet"

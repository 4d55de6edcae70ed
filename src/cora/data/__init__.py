"""Interaction tables: import, raw processing, validation, prompts, batching. Knows no model."""

from cora.data.schema import COLUMNS, SPLITS, validate_table
from cora.data.store import Dataset, load_dataset, write_dataset

__all__ = ["COLUMNS", "SPLITS", "validate_table", "Dataset", "load_dataset", "write_dataset"]

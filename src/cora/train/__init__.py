"""The one training loop for every LLM method, its checkpoints, and run folders."""

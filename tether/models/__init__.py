"""Model loading, LoRA, and log-prob utilities."""

"""Converters from official PyTorch checkpoints to orbax directories (torch is imported only here)."""

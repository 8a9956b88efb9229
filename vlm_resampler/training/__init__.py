"""Stages, their losses and the loop that runs them (transformers' Trainer)."""

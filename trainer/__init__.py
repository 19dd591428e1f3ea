"""Prompt learning from cached tensors: prompts, text encoder, losses, loop, scoring, metrics."""

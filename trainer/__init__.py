"""Prompt learning from cached tensors: prompts, text encoder, model, losses, training loop (and
the CLIP + Rendering baseline's untrained prompts). Never imports :mod:`scoring`."""

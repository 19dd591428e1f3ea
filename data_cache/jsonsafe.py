"""Strict JSON values: what pad writes is valid JSON for any reader (no NaN or Infinity)."""
from __future__ import annotations

import math


def null_nonfinite(value):
    """``value`` with every non-finite float (NaN, ±inf) replaced by None, recursively through
    dicts (keys made strings), lists and tuples (made lists); other values unchanged."""
    if isinstance(value, dict):
        return {str(k): null_nonfinite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [null_nonfinite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

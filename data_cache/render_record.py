"""How a render store was rendered, as a plain record that a run carries along.

A trained run (``config.json``) stores :func:`render_record` of the render store its features
came from, so that ``pad predict`` renders new files exactly as the cache was rendered
(views, image size, supersampling, splat size, kNN, normalization) and its scores equal
``pad score``'s on the same cloud. The record holds only JSON values:

- ``image_size`` int, ``supersample`` int, ``knn`` int
- ``views``: the camera set as ``pad render --views`` takes it (``paper``, ``scan`` or ``N``),
  or None for a store made with cameras of its own (``cameras`` always holds the matrices)
- ``point_size``: ``auto`` or the splat half-size in output pixels, as a string
- ``cameras``: the store's ``views`` attribute (list of camera dicts, see DESIGN.md)
- ``normalization``: the store's ``normalization`` attribute (a JSON value)
"""
from __future__ import annotations

from data_cache.errors import PadError

RECORD_KEYS = ("image_size", "supersample", "views", "point_size", "knn", "cameras", "normalization")


def render_record(attrs: dict) -> dict:
    """The record of a render store from its group attributes (``RenderStore.attrs``)."""
    try:
        point_size = attrs["point_size_px"]
        spec = (attrs.get("render") or {}).get("view_set")
        return {
            "image_size": int(attrs["image_size"]),
            "supersample": int(attrs["supersample"]),
            "views": None if spec is None else str(spec),
            "point_size": "auto" if isinstance(point_size, str) else repr(float(point_size)),
            "knn": int(attrs["knn_k"]),
            "cameras": list(attrs["views"]),
            "normalization": attrs["normalization"],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise PadError(f"the render store's attributes do not say how it was rendered ({exc})") from None


def check_record(record) -> dict:
    """``record`` validated (every key of :data:`RECORD_KEYS` with a value of the right type);
    PadError naming the first problem."""
    if not isinstance(record, dict):
        raise PadError("the run's render record is not an object")
    types = {"image_size": int, "supersample": int, "views": (str, type(None)), "point_size": str, "knn": int,
             "cameras": list, "normalization": (str, dict)}
    for key in RECORD_KEYS:
        if key not in record or not isinstance(record[key], types[key]):
            raise PadError(f"the run's render record has no valid '{key}'")
    return record

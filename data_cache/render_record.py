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
- ``style`` (``pad`` or ``pointad``), ``seed`` (``--style pointad``'s seed) and ``layout`` (the
  dataset format, whose official script ``--style pointad`` reproduces); with ``pointad``,
  ``point_size`` is the size of classes outside the scripts' tables
"""
from __future__ import annotations

from data_cache.errors import PadError

RECORD_KEYS = ("image_size", "supersample", "views", "point_size", "knn", "cameras", "normalization")
#: Keys a record has since ``--style`` (older records are ``--style pad``).
STYLE_KEYS = {"style": "pad", "seed": 0, "layout": None}


def render_record(attrs: dict) -> dict:
    """The record of a render store from its group attributes (``RenderStore.attrs``)."""
    try:
        point_size = attrs["point_size_px"]
        spec = (attrs.get("render") or {}).get("view_set")
        style = attrs.get("style")
        record = {
            "image_size": int(attrs["image_size"]),
            "supersample": int(attrs["supersample"]),
            "views": None if spec is None else str(spec),
            "knn": int(attrs["knn_k"]),
            "cameras": list(attrs["views"]),
            "normalization": attrs["normalization"],
            "layout": str((attrs.get("source") or {}).get("format")),
        }
        if isinstance(style, dict):           # --style pointad: sizes per class, "other" for the rest
            other = point_size.get("other")
            record.update(style=str(style["name"]), seed=int(style.get("seed", 0)),
                          point_size=repr(float(other)))
        else:
            record.update(style="pad", seed=0,
                          point_size="auto" if isinstance(point_size, str) else repr(float(point_size)))
        return record
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PadError(f"the render store's attributes do not say how it was rendered ({exc})") from None


def check_record(record) -> dict:
    """``record`` validated (every key of :data:`RECORD_KEYS` with a value of the right type; the
    keys of :data:`STYLE_KEYS` filled in for records made before ``--style``); PadError naming the
    first problem."""
    if not isinstance(record, dict):
        raise PadError("the run's render record is not an object")
    types = {"image_size": int, "supersample": int, "views": (str, type(None)), "point_size": str, "knn": int,
             "cameras": list, "normalization": (str, dict)}
    for key in RECORD_KEYS:
        if key not in record or not isinstance(record[key], types[key]):
            raise PadError(f"the run's render record has no valid '{key}'")
    record = {**STYLE_KEYS, **record}
    if record["style"] not in ("pad", "pointad") or not isinstance(record["seed"], int) \
            or (record["style"] == "pointad" and not isinstance(record["layout"], str)):
        raise PadError("the run's render record has no valid 'style', 'seed' or 'layout'")
    return record

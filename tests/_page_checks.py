"""Checks of the HTML pages pad writes (report.html, the standalone 3D views): the only scripts are
ours — the two shared files under assets/ and JSON data blocks — and names never end up as markup."""
from __future__ import annotations

import json
import re

OUR_SOURCES = ('<script src="assets/plotly.min.js"></script>', '<script src="assets/pad_viewer.js"></script>')
DATA_BLOCK = re.compile(r'<script type="application/json" id="pad-view-\d{3}">([^<]*)</script>')


def json_blocks(page: str) -> list:
    """The parsed JSON documents of the page's data blocks."""
    return [json.loads(text) for text in DATA_BLOCK.findall(page)]


def without_our_scripts(page: str) -> str:
    """``page`` with our script elements removed, after checking each data block is one JSON value
    with no ``<`` inside (so nothing in it can close the element); any other ``<script`` stays."""
    for text in DATA_BLOCK.findall(page):
        assert "<" not in text and ">" not in text
        json.loads(text)
    page = DATA_BLOCK.sub("", page)
    for source in OUR_SOURCES:
        page = page.replace(source, "")
    return page


def plotly_array(array) -> "np.ndarray":
    """A plotly typed array ({"dtype", "bdata"}) or list -> numpy."""
    import base64

    import numpy as np

    if isinstance(array, dict):
        return np.frombuffer(base64.b64decode(array["bdata"]), dtype=np.dtype(array["dtype"]))
    return np.asarray(array)

"""Options of ``pad info``."""
from __future__ import annotations

from dataclasses import dataclass

from data_cache.options import option


@dataclass
class InfoConfig:
    """``pad info --cache CACHE``: the render store and every feature store, with sizes; --samples lists the
    samples (ids for pad show --sample); --verify checks them."""
    cache: str = option(help="Cache directory.")
    verify: bool = option(False, "Check every done sample for completeness and consistency.")
    repair: bool = option(False, "With --verify: clear done on broken samples so a rerun redoes only them.")
    samples: bool = option(False, "Also list every sample of the render store: id, class, split, label, whether it "
                                  "is rendered (done) and, per feature store, whether its features are.")
    json: bool = option(False, "Print JSON.")

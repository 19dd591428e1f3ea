"""The on-disk cache shared by every pad stage: render store (Zarr v3), feature
store (HDF5), checkpoints; schema constants, options and the one error type."""
from data_cache.errors import PadError

__all__ = ["PadError"]

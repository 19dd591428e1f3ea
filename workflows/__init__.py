"""End-to-end jobs that chain stages (demo, predict). The only package allowed to
import both ``pipeline`` and ``trainer``."""

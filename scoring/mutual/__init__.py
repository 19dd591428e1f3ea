"""MuSc-V2's training-free mutual scoring (``pad mutual``), computed as the official code computes it.

- :mod:`scoring.mutual.snamd`: neighbourhood aggregation of patch/point tokens (SNAMD)
- :mod:`scoring.mutual.msm`: mutual scoring of one modality, in bounded memory (MSM)
- :mod:`scoring.mutual.cross_modal`: the 2D+3D variant (alignment, rank replacement, confidence)
- :mod:`scoring.mutual.maps`: centre scores to point maps (3-NN interpolation, the uint8 blur)
- :mod:`scoring.mutual.rscon`: re-scoring of object scores (RsCon)
- :mod:`scoring.mutual.mutual`: the ``pad mutual`` runner on a cache's token stores
"""

"""Offline preprocessing: ingestion, synthetic data, rendering, feature extraction, Dask orchestration."""

"""Datasets: downloaders and manifest builders, one module per source."""

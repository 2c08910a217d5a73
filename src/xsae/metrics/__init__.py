"""Metrics: plain functions on tensors/arrays, each with known-answer tests."""

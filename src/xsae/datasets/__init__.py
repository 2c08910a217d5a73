"""Datasets: downloaders and manifest builders, one module per source."""

#: Kinds whose train split is empty by construction (features exist for the test split only).
TEST_ONLY_KINDS = ("imagenet_val", "class_prompts")

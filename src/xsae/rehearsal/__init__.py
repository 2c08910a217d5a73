"""The paper DAG at miniature scale: every rule, run, table and figure of `config/paper.yaml`, with
datasets served from loopback in their published formats and encoders replaced by tiny random
models of the same loader and architecture."""

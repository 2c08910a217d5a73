"""xsae: cross-model sparse autoencoders.

The library behind the workflow: datasets, encoders, feature store, SAE models and trainer,
metrics, tables, figures and provenance. Every rule of the workflow calls into it, and every
piece can be used without Snakemake.
"""

__version__ = "0.1.0"

"""Top-activating samples of chosen latents in every stream (rule figure_top_activations)."""

from xsae import figures, provenance
from xsae.datasets.manifest import read_manifest
from xsae.workflow import script

with script(snakemake) as log, provenance.from_snakemake(snakemake):
    top = figures.read_top_activations(snakemake.input.top)
    latents = figures.pick_latents(top, snakemake.params.n_latents)
    figure = figures.top_activations_figure(top, read_manifest(snakemake.input.manifest), latents,
                                            per_stream=snakemake.params.per_stream,
                                            title=f"SAE run {snakemake.wildcards.run}")
    figures.save(figure, snakemake.output.png, snakemake.output.pdf)
    log.info("latents shown: %s", latents)

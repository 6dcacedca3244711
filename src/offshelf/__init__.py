"""offshelf: training-free, off-the-shelf classifier guidance of diffusion models."""

__version__ = "0.2.0"


def guide(pipe, classifier, **options):
    """Calibrated off-the-shelf guidance for a diffusers pipeline: see
    :func:`offshelf.integrations.diffusers.guide` (imported here on first use, so that
    ``import offshelf`` does not import diffusers)."""
    from offshelf.integrations.diffusers import guide as guide_diffusers

    return guide_diffusers(pipe, classifier, **options)

"""offshelf: training-free, off-the-shelf classifier guidance of diffusion models."""

__version__ = "0.2.0"


def guide(pipe, classifier, **options):
    """Calibrated off-the-shelf guidance for a diffusers pipeline (docs/diffusers.md).

    * A text-to-image pipeline (Stable Diffusion, SDXL, SD3, Flux, ...): ``classifier`` is any
      objective (a classifier with ``target=``, ``"clip"``, a reward callable) and the result is
      a guided copy with the pipeline's own call:
      :func:`offshelf.integrations.text2image_pipelines.guide_text2image`.
    * A ``DDPMPipeline``- or ``DiTPipeline``-style one: :func:`offshelf.integrations.diffusers.guide`.

    The modules are imported here on first use, so that ``import offshelf`` does not import diffusers."""
    from offshelf.integrations.diffusers import guide as guide_diffusers
    from offshelf.integrations.diffusers import is_text_to_image

    if is_text_to_image(pipe):
        from offshelf.integrations.text2image_pipelines import guide_text2image

        return guide_text2image(pipe, classifier, **options)
    return guide_diffusers(pipe, classifier, **options)

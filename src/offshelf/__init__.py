"""offshelf: training-free, off-the-shelf classifier guidance of diffusion models."""

__version__ = "0.2.0"

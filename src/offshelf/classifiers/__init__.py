"""Classifiers that guide: the off-the-shelf zoo, Softplus surgery and noise-aware baselines."""

from offshelf.classifiers.softplus import count_relus, softplus_surgery

__all__ = ["softplus_surgery", "count_relus"]

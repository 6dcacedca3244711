"""The optional dependencies: which extra of ``pip install 'offshelf[...]'`` brings each package,
and the import error that names it.

``import offshelf`` and the guidance library (``guidance``, ``samplers``, ``classifiers``,
``backbones``, ``integrations``) need only torch, torchvision and numpy. The workflow's modules
(config, CLI, metrics, reports, figures, checkpoints) need ``offshelf[workflow]``; the diffusers
integration ``offshelf[diffusers]``; CLIP guidance ``offshelf[clip]``. A module that needs an
extra calls :func:`needs` before importing it, so a missing package is one message naming the
extra to install, not a bare ``No module named ...``.
"""

from __future__ import annotations

import importlib

# import name -> (the extra that installs it, its distribution name)
EXTRA_OF = {
    "yaml": ("workflow", "pyyaml"),
    "jsonschema": ("workflow", "jsonschema"),
    "pandas": ("workflow", "pandas"),
    "scipy": ("workflow", "scipy"),
    "matplotlib": ("workflow", "matplotlib"),
    "sklearn": ("workflow", "scikit-learn"),
    "tqdm": ("workflow", "tqdm"),
    "cleanfid": ("workflow", "clean-fid"),
    "snakemake": ("workflow", "snakemake"),
    "diffusers": ("diffusers", "diffusers"),
    "open_clip": ("clip", "open-clip-torch"),
}


class MissingExtraError(ModuleNotFoundError):
    """An optional package is not installed; the message names the extra that installs it."""


def needs(user: str, *modules: str) -> None:
    """Import ``modules`` (import names) for ``user`` (the offshelf module or feature that needs
    them); raise :class:`MissingExtraError` naming the extra when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            extra, distribution = EXTRA_OF[name.split(".")[0]]
            raise MissingExtraError(
                f"{user} needs {distribution}, which is not installed: pip install 'offshelf[{extra}]' "
                f"(the guidance library itself needs only torch, torchvision and numpy)",
                name=name) from err

"""Diffusion families behind one interface (:class:`offshelf.backends.base.Backend`).

``BACKENDS`` maps the built-in names to their classes (imported lazily, so planning a workflow
never imports torch-heavy modules it does not use). A config may also name any class by import
path, ``backbone: "mypkg.mymodule:MyBackend"``, to add a diffusion family without editing
offshelf (docs/backends.md).
"""

from __future__ import annotations

import importlib

BACKENDS: dict[str, str] = {
    "digits": "offshelf.backends.digits:DigitsBackend",
    "adm128": "offshelf.backends.adm128:ADM128Backend",
    "edm64": "offshelf.backends.edm64:EDM64Backend",
    "dit256": "offshelf.backends.dit256:DiT256Backend",
}


class UnknownBackendError(ValueError):
    """A backbone name that is neither built in nor an importable ``module:Class``."""


def resolve(name: str) -> type:
    """The backend class a config's ``backbone`` names: a built-in name or ``module:Class``.

    Raises :class:`UnknownBackendError` with a one-line message that says what was expected."""
    if not isinstance(name, str) or not name:
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: expected one of {', '.join(BACKENDS)} "
                                  f"or an import path 'package.module:Class'")
    path = BACKENDS.get(name, name)
    module_name, sep, class_name = path.partition(":")
    if not sep or not module_name or not class_name:
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: expected one of {', '.join(BACKENDS)} "
                                  f"or an import path 'package.module:Class'")
    if not all(part.isidentifier() for part in module_name.split(".")):  # '.foo' (relative), 'a..b', '1x'
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: {module_name!r} is not an absolute module "
                                  f"path; expected 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: cannot import module {module_name!r} "
                                  f"({err})") from err
    except Exception as err:  # the plug-in's module code ran and failed (docs/backends.md, "Trust")
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: importing module {module_name!r} raised "
                                  f"{type(err).__name__}: {' '.join(str(err).split())}") from err
    cls = getattr(module, class_name, None)
    from offshelf.backends.base import Backend

    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise UnknownBackendError(f"config key 'backbone' = {name!r}: {module_name}.{class_name} is "
                                  f"{'missing' if cls is None else 'not a subclass of offshelf.backends.base.Backend'}")
    return cls


def create(spec: dict):
    """A backend from its job param ``{"name": ..., "options": {...}}`` (see :func:`spec_from_config`)."""
    return resolve(spec["name"])(spec.get("options", {}))


def spec_from_config(config: dict) -> dict:
    """The backend a workflow config names, as a job param: its name and the options its jobs use."""
    cls = resolve(config["backbone"])
    return {"name": config["backbone"], "options": cls.options_from_config(config)}

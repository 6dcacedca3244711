"""Bridges from offshelf's guidance to other libraries' samplers. Each submodule imports its
library lazily, so ``import offshelf`` never needs them: ``offshelf.integrations.diffusers``
(the ``diffusers`` extra)."""

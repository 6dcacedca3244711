"""Bridges from offshelf's guidance to other libraries' samplers. Each submodule imports its
library lazily, so ``import offshelf`` never needs them (the ``diffusers`` extra):

* ``offshelf.integrations.diffusers`` -- pixel (DDPMPipeline-style) and class-conditional latent
  (DiTPipeline-style) pipelines, ``GuidedModel``, the scheduler arithmetic;
* ``offshelf.integrations.text2image_pipelines`` -- Stable Diffusion, SDXL, SD3, Flux and their
  kin, guided by an objective of the decoded image (``offshelf.integrations.objectives``);
* ``offshelf.integrations.generate`` -- the ``offshelf generate`` command;
* ``offshelf.integrations.tiny_pipelines`` -- random pipelines of each family, nothing downloaded."""

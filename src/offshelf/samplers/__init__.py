"""The three samplers of the paper, one algorithm box each, behind one calling contract.

Contract (``tests/unit/test_samplers_contract.py`` checks it with :func:`inspect.signature`)::

    sample(net, noise_or_rng, schedule, *, guidance=None, callback=None, progress=False,
           **family_knobs) -> images

* exactly three positional parameters, in this order: the network, what the starting noise comes
  from, the noise schedule. The schedule is required, except EDM's ``num_steps`` (NVlabs' default 18):

  ======================  ===========  =================================  ===========================
  sampler                 network      starting noise or generator        schedule
  ======================  ===========  =================================  ===========================
  ``ddpm.ddpm_sample``    ``model``    ``rng`` (StackedRandomGenerator)   ``diffusion`` (respaced)
  ``edm.edm_sample``      ``net``      ``latents`` (N(0, I), per sample)  ``num_steps`` (EDM Eq. 5)
  ``dit.dit_sample``      ``model``    ``rng`` (StackedRandomGenerator)   ``diffusion`` (respaced)
  ``particles.*``         ``model``    ``rng`` (StackedRandomGenerator)   ``diffusion`` (respaced)
  ======================  ===========  =================================  ===========================

  ``particles.best_of_n_sample`` and ``particles.smc_sample`` spend N trajectories per image on
  Algorithm 1's step instead of a gradient per step: the ``guidance`` classifier scores candidates
  (Best-of-N) or weights particles (SMC, potential scale λ = ``guidance.scale``).

* then, keyword-only, in this order and with these defaults, in every sampler:

  - ``guidance=None`` -- ``None`` (unguided) or one :class:`offshelf.guidance.Guidance`: the
    classifier, ``scale``, ``sine_factor``, Σ_max mode, DiT schedule, ``through_denoiser``, target
    ``label``. A field the family cannot honour raises one ValueError naming it
    (:meth:`~offshelf.guidance.Guidance.require`), e.g. ``edm_sample`` with ``through_denoiser=True``.
  - ``callback=None`` -- called once per step as ``callback(step=, x_t=, pred_xstart=, grad=,
    logits=, **family_extras)``, all keywords (``grad``/``logits`` None when unguided); ``step`` is
    the algorithm's own index (DDPM/DiT: spaced k = T−1 … 0; EDM: i = 0 … N−1).
  - ``progress=False`` -- a tqdm bar over the steps.

* every other knob is keyword-only and family-specific: the class condition ``y`` (DDPM: labels
  or None; EDM: one-hot, NVlabs' ``class_labels``; DiT: labels, required), DDPM's ``shape``
  (required), ``recurrent_steps``, ``cfg_scale``, ``null_label``, ``clip_denoised``; EDM's
  NVlabs names ``sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise`` and its churn
  generator ``rng``; DiT's decoder ``vae`` (required), ``latent_shape`` (required), ``cfg_scale``,
  ``cfg_channels``, ``latent_scale``, ``return_latents``.
* the result: images in about [−1, 1], one per sample (DiT with ``return_latents``:
  ``(images, z_0)``). Every random draw is per sample, so a sample depends on its own seed only.

One-step functions (``ddpm.ddpm_step``, ``dit.dit_step``) take the same ``guidance`` object,
keyword-only. Classifier-free guidance's combination is :func:`offshelf.guidance.cfg_combine`
in both families that have it.
"""

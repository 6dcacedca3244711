"""Expand a workflow config into the jobs it implies, once: :func:`offshelf.planning.plan.build_plan`
makes the :class:`~offshelf.planning.plan.Plan` the Snakefile and ``offshelf plan`` read.

- :mod:`.rows`: table rows → settings (× regime × swept scale, or a guidance-scale search);
- :mod:`.searches`: a guided row's scale search, its rounds' records (which carry the settings
  they propose, so a searched setting is read from data, never from its name);
- :mod:`.probes`: calibration probes, guided and unguided;
- :mod:`.params`: the seeds, params and file locations of jobs;
- :mod:`.costs`: job counts (bounded by ``max_jobs``) and the sampling work of a config.
"""

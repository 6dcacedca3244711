"""Issue 25 for offshelf.integrations.diffusers: ``offshelf.guide(pipe, classifier)`` samples
without a host read per step, and still stops at the first NaN or inf naming its step and tensor.

The reads are counted as in tests/unit/test_samplers_host_sync.py (every Python-level way a
tensor's value reaches the host, for N and for 2N steps) and charged to the innermost offshelf or
diffusers frame: the scheduler's ``step`` and the UNet read values themselves (``DDPMScheduler``
compares timesteps), in the plain ``DDPMPipeline`` too; offshelf must add none per step.
"""

from __future__ import annotations

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import offshelf  # noqa: E402
from offshelf.guidance import NonFiniteError  # noqa: E402
from test_integrations_diffusers import tiny_classifier, tiny_unet  # noqa: E402
from test_samplers_host_sync import counting_host_reads, reads_per_step  # noqa: E402
from nan_injection import nan_from_call  # noqa: E402

SCHEDULERS = ("DDPMScheduler", "DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")


def guided_pipeline(scheduler_name, unet=None, classifier=None):
    scheduler = getattr(diffusers, scheduler_name)(num_train_timesteps=1000)
    pipe = diffusers.DDPMPipeline(unet=unet or tiny_unet(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return offshelf.guide(pipe, classifier or tiny_classifier(), scale=1.0)


def offshelf_reads(reads) -> dict:
    return {site: n for site, n in reads.items() if " at offshelf/" in site}


@pytest.mark.parametrize("scheduler_name", SCHEDULERS)
def test_guide_adds_no_host_read_per_step(scheduler_name):
    guided = guided_pipeline(scheduler_name)

    def run(steps):
        return guided([1, 3], num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0))

    per_step = reads_per_step(run, steps=3)
    assert not offshelf_reads(per_step), f"offshelf's guidance reads tensors back to the host per step: {dict(per_step)}"


def test_the_charge_tells_offshelf_from_diffusers():
    """The counter is not blind to the pipeline's loop: the per-step check it replaced, run at each
    callback, shows up as offshelf reads; diffusers' own scheduler reads are charged to diffusers."""
    guided = guided_pipeline("DDPMScheduler")

    def run(steps):
        return guided([1, 3], num_inference_steps=steps, output_type="pt", generator=torch.Generator().manual_seed(0),
                      callback=lambda **info: None)  # a callback may read the values: the guard is read before it

    per_step = reads_per_step(run, steps=3)
    assert sum(offshelf_reads(per_step).values()) == 3  # one guard read per extra step
    assert any(" at diffusers/" in site for site in per_step)


@pytest.mark.parametrize("bad", ["denoiser output", "classifier logits"])
@pytest.mark.parametrize("with_callback", [False, True])
def test_a_nan_midway_stops_the_run_at_its_step_and_tensor(bad, with_callback):
    """The 3rd call's NaN (step 2 of 5) is reported at step 2, naming the tensor; a callback never
    sees it (it saw steps 0 and 1), and no image is returned."""
    role, module = ("unet", tiny_unet()) if bad == "denoiser output" else ("classifier", tiny_classifier())
    seen = []

    def callback(step, sample, **info):
        seen.append(step)
        assert torch.isfinite(sample).all() and torch.isfinite(info["grad"]).all()

    # the hook goes in before guide(), which copies the classifier (its ReLUs become Softplus) with it
    with nan_from_call(module, calls=3):
        guided = guided_pipeline("DDIMScheduler", **{role: module})
        with pytest.raises(NonFiniteError, match=f"^step 2: {bad} has non-finite"):
            guided([1, 3], num_inference_steps=5, output_type="pt", generator=torch.Generator().manual_seed(0),
                   callback=callback if with_callback else None)
    assert seen == ([0, 1] if with_callback else [])

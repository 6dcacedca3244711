"""``offshelf.guide(pipe, objective)`` on a text-to-image pipeline samples without a host read per
step, and still stops at the first NaN or inf naming its step and tensor.

The reads are counted as in tests/unit/test_samplers_host_sync.py (every Python-level way a
tensor's value reaches the host, for N and for 2N steps, charged to the innermost offshelf or
diffusers frame), and ``torch.equal`` (a function, not a tensor method, that syncs as well) is
counted with them. The guided pipeline must read per step exactly what the plain pipeline reads
(Euler's own step, in diffusers), nothing more: not in offshelf, nor in the diffusers code offshelf
calls (the VAE it decodes x̂0 with).

The step index comes from counting ``scheduler.step`` calls instead of reading each timestep back:
every guided call's step is still the index of its timestep in the scheduler's schedule (img2img
starting mid-schedule, Flux's two true-CFG calls per step), and the guided images are those of the
per-step lookup (recorded bitwise before the change; what stays here is that the steps agree).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")

import offshelf  # noqa: E402
from offshelf.guidance import NonFiniteError  # noqa: E402
from offshelf.integrations.text2image_pipelines import find_step  # noqa: E402
from offshelf.integrations.tiny_pipelines import build  # noqa: E402
from test_samplers_host_sync import counting_host_reads  # noqa: E402
from nan_injection import nan_from_call  # noqa: E402

SIZE = 16
SCALES = {"sd": 30.0, "sdxl": 30.0, "sd3": 0.1, "flux": 0.05}  # reward rising with the scale: test_integrations_text2image
TARGET = torch.linspace(-0.8, 0.8, SIZE).view(1, 1, 1, SIZE)


def reward(images):
    return -((images - TARGET.to(images)) ** 2).flatten(1).sum(1)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i-sync")
    built = {family: build(family, root / family) for family in SCALES}
    for pipe in built.values():
        pipe.set_progress_bar_config(disable=True)
    return built


def call(pipe, family, steps=3, **options):
    """Two prompts; CFG with negative prompts where the family has it (Flux: distilled, none)."""
    kwargs = dict(num_inference_steps=steps, height=SIZE, width=SIZE, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    if family != "flux":
        kwargs.update(negative_prompt=["", "blurry"], guidance_scale=4.0)
    kwargs.update(options)
    return pipe(["a red cat", "a dog"], **kwargs).images


@contextmanager
def counting_reads_and_equal():
    """:func:`counting_host_reads`, and each ``torch.equal`` called from offshelf's code."""
    original = torch.equal

    with counting_host_reads() as reads:
        def counted_equal(*args, **kwargs):
            import sys

            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "/offshelf/" in caller:
                reads[f"equal at offshelf/{caller.rsplit('/', 1)[-1]}"] += 1
            return original(*args, **kwargs)

        torch.equal = counted_equal
        try:
            yield reads
        finally:
            torch.equal = original


def reads_per_step(run, steps: int):
    with counting_reads_and_equal() as short:
        run(steps)
    with counting_reads_and_equal() as long:
        run(2 * steps)
    return long - short


def offshelf_reads(reads) -> dict:
    return {site: n for site, n in reads.items() if " at offshelf/" in site}


CASES = {"sd": {}, "sdxl": {}, "sd3": {}, "flux": {},
         "flux-true-cfg": dict(negative_prompt=["blurry", "dark"], true_cfg_scale=2.0),
         "sdxl-rescale": dict(guidance_rescale=0.7)}


@pytest.mark.parametrize("case", CASES)
def test_guided_pipeline_reads_per_step_what_the_plain_one_reads(pipelines, case):
    family = case.split("-")[0]
    pipe, options = pipelines[family], CASES[case]
    guided = offshelf.guide(pipe, reward, scale=SCALES[family])

    def runner(p):
        return lambda steps: call(p, family, steps, **options)

    plain, per_step = reads_per_step(runner(pipe), 3), reads_per_step(runner(guided), 3)
    assert not offshelf_reads(per_step), f"offshelf reads tensors back to the host per step: {dict(per_step)}"
    assert per_step == plain  # nothing more in diffusers either (the VAE offshelf decodes with)


def test_the_counter_sees_the_reads_that_happen(pipelines):
    """Not blind: a pipeline callback has the guard read before it at every step (3 extra steps, 3
    reads), and the once-per-call torch.equal (is the batch CFG's doubled one?) is counted."""
    guided = offshelf.guide(pipelines["sd"], reward, scale=SCALES["sd"])
    per_step = reads_per_step(lambda steps: call(guided, "sd", steps,
                                                 callback_on_step_end=lambda pipe, i, t, tensors: {}), 3)
    assert sum(offshelf_reads(per_step).values()) == 3
    with counting_reads_and_equal() as reads:
        call(guided, "sd")
    assert sum(n for site, n in reads.items() if site.startswith("equal at offshelf/")) == 1


@pytest.mark.parametrize("family", list(SCALES))
@pytest.mark.parametrize("callback", [None, "callback_on_step_end", "offshelf callback"])
def test_a_nan_midway_stops_the_run_at_its_step_and_tensor(pipelines, family, callback):
    """A NaN in the denoiser output on the 3rd of 5 steps stops the run at step 2, naming the
    tensor; no callback sees it (they saw steps 0 and 1, finite), no image is returned, and the
    scheduler's step is its own again."""
    pipe = pipelines[family]
    seen = []

    def on_step_end(pipeline, i, t, tensors):
        assert torch.isfinite(tensors["latents"]).all()
        seen.append(i)
        return {}

    def on_guided_step(step, grad, pred_xstart, **info):
        assert torch.isfinite(grad).all() and torch.isfinite(pred_xstart).all()
        seen.append(step)

    guided = offshelf.guide(pipe, reward, scale=SCALES[family],
                            callback=on_guided_step if callback == "offshelf callback" else None)
    model = guided.unet.model if family in ("sd", "sdxl") else guided.transformer.model
    with nan_from_call(model, calls=3), pytest.raises(NonFiniteError, match="^step 2: denoiser output has non-finite"):
        call(guided, family, steps=5,
             **({"callback_on_step_end": on_step_end} if callback == "callback_on_step_end" else {}))
    assert seen == ([] if callback is None else [0, 1])
    assert "step" not in vars(guided.scheduler)
    assert torch.isfinite(call(guided, family)).all()  # the next call starts afresh


def test_a_nan_gradient_is_named(pipelines):
    calls = []

    def nan_from_third(images):
        calls.append(1)
        return reward(images) * (float("nan") if len(calls) >= 3 else 1.0)

    guided = offshelf.guide(pipelines["sd3"], nan_from_third, scale=SCALES["sd3"])
    with pytest.raises(NonFiniteError, match="^step 2: guidance gradient has non-finite"):
        call(guided, "sd3", steps=5)


STEP_CASES = {"sd": {}, "sdxl": {}, "sd3": {}, "flux": {},
              "flux-true-cfg": dict(negative_prompt=["blurry", "dark"], true_cfg_scale=2.0),
              "sd-img2img": dict(strength=0.6), "sd-img2img-ddim": dict(strength=0.6)}


@pytest.mark.parametrize("case", STEP_CASES)
def test_each_guided_step_is_its_timesteps_index(pipelines, case):
    """The counted step of every guided call is where its timestep lies in the scheduler's
    schedule (what reading it back gave): from step 0, from mid-schedule for img2img (strength
    0.6 of 5 steps starts at step 2, with Euler's begin index and with DDIM, which has none), once
    per step with Flux's two true-CFG calls; the next call counts from its own start."""
    family = case.split("-")[0]
    pipe, options = pipelines[family], dict(STEP_CASES[case])
    if "img2img" in case:
        scheduler = pipe.scheduler
        if case.endswith("ddim"):
            config = {k: v for k, v in scheduler.config.items() if not k.startswith("_")}
            scheduler = diffusers.DDIMScheduler.from_config(config)
        pipe = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(pipe, scheduler=scheduler)
        options["image"] = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    counted, timesteps = [], []
    guided = offshelf.guide(pipe, reward, scale=SCALES[family], callback=lambda step, **info: counted.append(step))
    model = guided.unet.model if family in ("sd", "sdxl") else guided.transformer.model
    handle = model.register_forward_pre_hook(lambda module, args, kwargs: timesteps.append(
        kwargs["timestep"] if "timestep" in kwargs else args[1]), with_kwargs=True)
    try:
        for steps in (5, 4):
            counted.clear()
            timesteps.clear()
            first = call(guided, family, steps=steps, **options)
            looked_up = list(dict.fromkeys(find_step(guided.scheduler, t) for t in timesteps))
            expected = int(steps * 0.6) if "img2img" in case else steps  # diffusers' get_timesteps
            assert counted == looked_up and len(counted) == expected, (counted, looked_up)
    finally:
        handle.remove()
    assert torch.equal(call(guided, family, steps=4, **options), first)


def test_a_miscounted_step_is_caught_at_the_end(pipelines):
    """The one check of the count against the timesteps, at the end of the call: a step counted
    once too few (as if the pipeline stepped the scheduler past offshelf) is named, not returned."""
    guided = offshelf.guide(pipelines["sd"], reward, scale=SCALES["sd"])

    def lose_a_step(pipeline, i, t, tensors):
        if i == 1:
            guided.offshelf_denoiser._call.steps_done -= 1
        return {}

    with pytest.raises(RuntimeError, match=r"^step 2: the denoiser's timestep is step 3 of EulerDiscreteScheduler"):
        call(guided, "sd", steps=4, callback_on_step_end=lose_a_step)


def test_outside_a_pipeline_call_the_step_is_looked_up_and_checked_at_once(pipelines):
    """The guided UNet called by a loop of its own (no pipeline call to count steps or to read the
    guard at its end): the step is its timestep's index, and a NaN raises in that very call."""
    guided = offshelf.guide(pipelines["sd"], reward, scale=SCALES["sd"])
    guided.scheduler.set_timesteps(3)
    unet = guided.unet
    x = torch.randn(2, 4, SIZE // 2, SIZE // 2, generator=torch.Generator().manual_seed(1))
    text = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(2))
    unet(x, guided.scheduler.timesteps[1], encoder_hidden_states=text)
    assert unet.last["step"] == 1
    with nan_from_call(unet.model, calls=1):
        with pytest.raises(NonFiniteError, match="^step 2: denoiser output has non-finite"):
            unet(x, guided.scheduler.timesteps[2], encoder_hidden_states=text)

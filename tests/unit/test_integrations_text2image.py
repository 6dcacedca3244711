"""Off-the-shelf guidance for text-to-image pipelines (offshelf.integrations.text2image_pipelines).

Tiny random pipelines of each family -- Stable Diffusion (UNet2DConditionModel + CLIPTextModel +
AutoencoderKL), SDXL (two text encoders, added time ids), SD3 (SD3Transformer2DModel, two CLIP
encoders and T5) and Flux (FluxTransformer2DModel, CLIP + T5, packed latents) -- are built from
small configs (offshelf.integrations.tiny_pipelines: tokenizers written from a byte alphabet, no
hub), saved with ``save_pretrained`` and reloaded with ``HF_HUB_OFFLINE=1``. They show:

* scale 0 is the pipeline's own output, bitwise, for the same generator (CFG and negative prompts
  on); the user's pipeline is not changed;
* the gradient through the decoder is that of objective ∘ decoder (central finite differences);
* an analytic check: the reward −‖image − target‖² of the output rises with the scale, every family;
* chunked and unchunked decoder backward (and gradient checkpointing) give the same gradient;
* the classifier (calibrated log-probability) and CLIP objectives, TAESD as the decoder, the
  guidance window and every-k-th step.
"""

import copy
import json

import pytest
import torch
from torch import nn

diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from offshelf.guidance import calibrated_gradient  # noqa: E402
from offshelf.integrations.objectives import (ClassifierObjective, RewardObjective, chunked_gradient,  # noqa: E402
                                              objective_from)
from offshelf.integrations.text2image_pipelines import GuidedDenoiser, decode_latents  # noqa: E402
from offshelf.integrations.tiny_pipelines import build, tiny_taesd  # noqa: E402

FAMILIES = ["sd", "sdxl", "sd3", "flux"]
SIZE = 16  # pixels; latents 8×8 (Flux: 4×4 tokens of 16 channels)


def offline():
    """HF_HUB_OFFLINE=1 (and huggingface_hub's constant, read once at import): any hub request raises."""
    import huggingface_hub.constants

    patch = pytest.MonkeyPatch()
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setenv("HF_HOME", "/nonexistent-offshelf-test-cache")
    patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return patch


PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
                    "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    """Every family saved with save_pretrained and reloaded offline (built once per module)."""
    root = tmp_path_factory.mktemp("t2i")
    loaded = {}
    for family in FAMILIES:
        build(family, root / f"{family}-parts").save_pretrained(root / family)
    patch = offline()
    try:
        for family in FAMILIES:
            pipe = getattr(diffusers, PIPELINE_CLASSES[family]).from_pretrained(root / family)
            pipe.set_progress_bar_config(disable=True)
            loaded[family] = pipe
    finally:
        patch.undo()
    return loaded


def call(pipe, family, generator_seed=0, **options):
    """Two prompts; CFG with negative prompts where the family has it (Flux: distilled, none)."""
    kwargs = dict(num_inference_steps=3, height=SIZE, width=SIZE, output_type="pt",
                  generator=torch.Generator().manual_seed(generator_seed))
    if family != "flux":
        kwargs.update(negative_prompt=["", "blurry"], guidance_scale=4.0)
    kwargs.update(options)
    return pipe(["a red cat", "a dog"], **kwargs).images


TARGET = torch.linspace(-0.8, 0.8, SIZE).view(1, 1, 1, SIZE).expand(1, 3, SIZE, SIZE)


def mse_reward(images):
    """−‖x − target‖² per image: maximised by the fixed target image, in pixel space."""
    return -((images - TARGET.to(images)) ** 2).flatten(1).sum(1)


# ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_scale_zero_is_the_pipelines_own_output_bitwise(pipelines, family):
    import offshelf

    pipe = pipelines[family]
    denoiser = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    scheduler = pipe.scheduler
    guided = offshelf.guide(pipe, mse_reward, scale=0.0)
    assert isinstance(guided, type(pipe)) and guided is not pipe
    own, unguided = call(pipe, family), call(guided, family)
    assert torch.equal(own, unguided)
    # the user's pipeline is not changed: same denoiser, same scheduler object
    assert (pipe.unet if family in ("sd", "sdxl") else pipe.transformer) is denoiser and pipe.scheduler is scheduler
    assert not isinstance(denoiser, GuidedDenoiser)
    assert torch.equal(call(pipe, family), own)


def test_guiding_leaves_a_half_precision_pipeline_as_it_was(pipelines):
    """The copy shares the modules: guiding must not cast them (diffusers' from_pipe would cast all
    to float32)."""
    import copy

    import offshelf

    pipe = diffusers.StableDiffusionPipeline.from_pipe(pipelines["sd"])
    pipe.unet, pipe.text_encoder = copy.deepcopy(pipe.unet).to(torch.bfloat16), copy.deepcopy(pipe.text_encoder)
    pipe.text_encoder.to(torch.bfloat16)
    guided = offshelf.guide(pipe, mse_reward, scale=1.0)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    assert pipe.vae.dtype == torch.float32 and guided.vae is pipe.vae and guided.unet.model is pipe.unet


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_of_the_output_rises_with_the_scale(pipelines, family):
    """The analytic check: a reward with a known maximiser in pixel space (−MSE to a fixed target
    image); the reward of every output image rises with the scale (same generator). The scales
    differ per family: the random UNets' x̂0 is far outside the decoder's range at the noisy
    steps (std ~170 latent units on Euler's σ = 14.6), so a unit of scale moves the SD/SDXL
    images much less than the flow-matching ones (which start at σ = 1, Σ_max = 1)."""
    import offshelf

    pipe = pipelines[family]
    rewards = []
    for scale in ((0.0, 30.0, 300.0) if family in ("sd", "sdxl") else (0.0, 0.03, 0.1)):
        images = call(offshelf.guide(pipe, mse_reward, scale=scale), family)
        rewards.append(mse_reward(images * 2 - 1))
    rewards = torch.stack(rewards)  # [scale, image]
    assert (rewards[1:] > rewards[:-1]).all(), rewards


def _double_decoder(pipe):
    import copy

    return copy.deepcopy(pipe.vae).double()


@pytest.mark.parametrize("family", ["sd", "flux"])
def test_decoder_gradient_matches_finite_differences(pipelines, family):
    """∇_{ẑ0} J(D(ẑ0)) from the objectives equals central differences of objective ∘ decoder at
    ẑ0 along random directions (float64 decoder), for a reward and for the calibrated classifier."""
    decoder = _double_decoder(pipelines[family])
    torch.manual_seed(0)
    z = torch.randn(2, 4, SIZE // 2, SIZE // 2, dtype=torch.float64) * 0.5

    def decode(u):
        return decode_latents(decoder, u.double()).double()

    classifier = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(3.0), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(4, 3)).double().eval()
    objectives = [RewardObjective(lambda x: mse_reward(x.double()).double()),
                  ClassifierObjective(classifier, [2, 0], joint_temperature=1.0, marginal_temperature=0.5)]
    def calibrated(u):  # Eq. 4 in float64 (calibrated_log_prob itself returns float32)
        logits = classifier(decode(u))
        return logits[torch.arange(2), [2, 0]] - torch.logsumexp(0.5 * logits, dim=1)

    values = [lambda u: mse_reward(decode(u)), calibrated]
    for objective, value_of in zip(objectives, values):
        grad, value = objective.gradient(z, decode, {})
        torch.testing.assert_close(value.double(), value_of(z).detach(), rtol=1e-6, atol=1e-6)
        for k in range(3):
            v = torch.randn(z.shape, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
            h = 1e-5
            with torch.no_grad():
                numeric = (value_of(z + h * v) - value_of(z - h * v)) / (2 * h)  # per image: directional derivative
            analytic = (grad.double() * v).flatten(1).sum(1)
            torch.testing.assert_close(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_chunked_and_checkpointed_decoder_backward_give_the_same_gradient(pipelines):
    """Chunks of 1 and 2 images against the whole batch of 3 (float64: the objectives are per
    image, so only the batch size of the convolutions differs), then in a guided run in float32."""
    pipe = pipelines["sd"]
    decoder = _double_decoder(pipe)
    torch.manual_seed(1)
    z = torch.randn(3, 4, SIZE // 2, SIZE // 2, dtype=torch.float64)

    def decode(u):
        return decode_latents(decoder, u)

    objective = RewardObjective(lambda x: mse_reward(x.double()))
    whole, value = chunked_gradient(objective, z, decode, {}, None)
    for chunk in (1, 2):
        grad, chunk_value = chunked_gradient(objective, z, decode, {}, chunk)
        torch.testing.assert_close(grad, whole, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(chunk_value, value, rtol=1e-12, atol=1e-12)
    import offshelf

    plain = call(offshelf.guide(pipe, mse_reward, scale=4.0), "sd")
    cheap = call(offshelf.guide(pipe, mse_reward, scale=4.0, decoder_chunk=1, checkpoint=True), "sd")
    torch.testing.assert_close(cheap, plain, rtol=0, atol=1e-5)
    assert not pipe.vae.is_gradient_checkpointing


def test_guidance_window_and_every_kth_step(pipelines):
    import offshelf

    pipe = pipelines["sd3"]
    for options, expected in (({}, [0, 1, 2, 3]), ({"window": (0.25, 0.75)}, [1, 2]), ({"every": 2}, [0, 2]),
                              ({"window": (0.5, 1.0), "every": 3}, [3])):
        steps = []
        guided = offshelf.guide(pipe, mse_reward, scale=1.0, callback=lambda **info: steps.append(info["step"]),
                                **options)
        call(guided, "sd3", num_inference_steps=4)
        assert steps == expected, options


def test_classifier_objective_raises_its_calibrated_log_probability(pipelines):
    """An off-the-shelf classifier (ReLU; Softplus surgery by guide) and a target class per image:
    the guided step's gradient is calibrated_gradient of classifier ∘ decoder; the target's
    calibrated log-probability of the output rises with the scale."""
    import offshelf
    from offshelf.classifiers.softplus import softplus_surgery
    from offshelf.guidance import calibrated_log_prob

    torch.manual_seed(3)
    classifier = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                               nn.Linear(8, 4)).eval()
    pipe = pipelines["sd3"]
    target = torch.tensor([1, 3])
    smooth = softplus_surgery(classifier, 3.0)
    values, seen = [], []
    for scale in (0.0, 0.1):
        guided = offshelf.guide(pipe, classifier, target=target, scale=scale, softplus_beta=3.0,
                                joint_temperature=1.0, marginal_temperature=0.5,
                                callback=lambda **info: seen.append(info))
        images = call(guided, "sd3")
        values.append(calibrated_log_prob(smooth(images * 2 - 1), target, 1.0, 0.5))
    assert (values[1] > values[0]).all(), values
    info = seen[-1]
    decoder = pipe.vae
    expected, _ = calibrated_gradient(info["pred_xstart"], target,
                                      lambda u: smooth(decode_latents(decoder, u)), 1.0, 0.5)
    torch.testing.assert_close(info["grad"], expected, rtol=1e-5, atol=1e-7)


def test_clip_objective_uses_each_images_prompt(pipelines):
    """CLIP similarity to the prompt each image was generated from (tiny random open_clip model):
    the gradient is the library's CLIP guidance (CLIPPromptClassifier, τ1 = 1, τ2 = 0)."""
    import offshelf
    from offshelf.classifiers.clip import CLIPPromptClassifier, build_random_clip

    model, tokenizer = build_random_clip(dict(embed_dim=8, vision_cfg=dict(image_size=16, layers=1, width=16,
                                                                         patch_size=8, head_width=8),
                                              text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2,
                                                            layers=1)))
    seen = []
    guided = offshelf.guide(pipelines["sd"], "clip", clip=(model, tokenizer), scale=1.0,
                            callback=lambda **info: seen.append(info))
    call(guided, "sd")
    assert len(seen) == 3
    reference = CLIPPromptClassifier(model, tokenizer, ["a red cat", "a dog"])
    expected, logits = calibrated_gradient(seen[-1]["pred_xstart"], torch.tensor([0, 1]),
                                           lambda u: reference(decode_latents(pipelines["sd"].vae, u)), 1.0, 0.0)
    torch.testing.assert_close(seen[-1]["grad"], expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(seen[-1]["value"], logits.diagonal(), rtol=1e-5, atol=1e-6)
    # two images per prompt: images 0, 1 belong to "a red cat", 2, 3 to "a dog"; chunked as well
    seen.clear()
    guided = offshelf.guide(pipelines["sd"], "clip", clip=(model, tokenizer), scale=1.0, decoder_chunk=3,
                            callback=lambda **info: seen.append(info))
    call(guided, "sd", num_images_per_prompt=2)
    x0 = seen[-1]["pred_xstart"]
    expected, logits = calibrated_gradient(x0, torch.tensor([0, 0, 1, 1]),
                                           lambda u: reference(decode_latents(pipelines["sd"].vae, u)), 1.0, 0.0)
    torch.testing.assert_close(seen[-1]["grad"], expected, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(seen[-1]["value"], logits[torch.arange(4), torch.tensor([0, 0, 1, 1])],
                               rtol=1e-5, atol=1e-6)


def test_tiny_decoder_guides_through_taesd(pipelines):
    """``decoder=`` an AutoencoderTiny: the gradient goes through it (not the VAE), the output
    is still decoded by the pipeline's VAE, and the reward still rises."""
    import offshelf

    pipe = pipelines["sd"]
    taesd = tiny_taesd()
    seen = []
    guided = offshelf.guide(pipe, mse_reward, scale=4.0, decoder=taesd, callback=lambda **info: seen.append(info))
    images = call(guided, "sd")
    info = seen[-1]
    expected = RewardObjective(mse_reward).gradient(info["pred_xstart"], lambda u: decode_latents(taesd, u), {})[0]
    torch.testing.assert_close(info["grad"], expected, rtol=1e-5, atol=1e-7)
    assert mse_reward(images * 2 - 1).mean() > mse_reward(call(pipe, "sd") * 2 - 1).mean()


def test_objectives_are_refused_clearly(pipelines):
    import offshelf

    with pytest.raises(ValueError, match="needs target="):
        offshelf.guide(pipelines["sd"], nn.Linear(2, 2))
    with pytest.raises(ValueError, match="objective='clip' needs clip="):
        offshelf.guide(pipelines["sd"], "clip")
    with pytest.raises(ValueError, match="window must be"):
        offshelf.guide(pipelines["sd"], mse_reward, window=(0.5, 0.2))
    pndm = diffusers.StableDiffusionPipeline.from_pipe(pipelines["sd"], scheduler=diffusers.PNDMScheduler())
    with pytest.raises(ValueError, match="^PNDMScheduler is not supported"):
        offshelf.guide(pndm, mse_reward)
    with pytest.raises(TypeError, match="window"):  # a pixel pipeline: text-to-image options are not taken
        unet = diffusers.UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4, layers_per_block=1,
                                     down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2)
        offshelf.guide(diffusers.DDPMPipeline(unet=unet,
                                              scheduler=diffusers.DDIMScheduler()), mse_reward, window=(0, 1))
    assert isinstance(objective_from(mse_reward), RewardObjective)
    from offshelf.integrations.diffusers import guide as guide_pixel_pipeline

    with pytest.raises(ValueError, match="StableDiffusionPipeline is a text-to-image pipeline"):
        guide_pixel_pipeline(pipelines["sd"], nn.Linear(2, 2))  # not taken for a DDPMPipeline-style one


REWARD_MODULE = '''
import torch

TARGET = torch.linspace(-0.8, 0.8, 16).view(1, 1, 1, 16)


def reward(images):
    return -((images - TARGET.to(images)) ** 2).flatten(1).sum(1)
'''


def test_generate_reproduces_its_output_from_its_json(tmp_path, monkeypatch):
    """``offshelf generate`` writes PNGs and generate.json; ``--from-json`` renders the same bytes."""
    from offshelf.cli import main

    build("sd", tmp_path / "parts").save_pretrained(tmp_path / "sd")
    (tmp_path / "t2i_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    patch = offline()
    try:
        assert main(["generate", "--pipeline", str(tmp_path / "sd"), "--prompt", "a red cat", "--prompt", "a dog",
                     "--negative-prompt", "blurry", "--objective", "t2i_rewards:reward", "--scale", "30",
                     "--seeds", "3,5", "--steps", "3", "--height", "16", "--width", "16", "--guidance-scale", "4",
                     "--window", "0", "1", "--out", str(tmp_path / "a")]) == 0
        record = json.loads((tmp_path / "a" / "generate.json").read_text())
        assert [(i["prompt"], i["seed"]) for i in record["images"]] == [("a red cat", 3), ("a dog", 3),
                                                                         ("a red cat", 5), ("a dog", 5)]
        assert record["settings"]["scale"] == 30 and record["settings"]["seeds"] == [3, 5]
        assert main(["generate", "--from-json", str(tmp_path / "a" / "generate.json"), "--out", str(tmp_path / "b")]) == 0
        assert main(["generate", "--from-json", str(tmp_path / "a" / "generate.json"), "--scale", "0",
                     "--out", str(tmp_path / "c")]) == 0
    finally:
        patch.undo()
    again = json.loads((tmp_path / "b" / "generate.json").read_text())
    assert again["images"] == record["images"] and again["settings"] == record["settings"]
    for image in record["images"]:
        assert (tmp_path / "a" / image["file"]).read_bytes() == (tmp_path / "b" / image["file"]).read_bytes()
    unguided = json.loads((tmp_path / "c" / "generate.json").read_text())["images"]
    assert [i["sha256"] for i in unguided] != [i["sha256"] for i in record["images"]]  # the guidance acted


def test_generate_names_a_bad_objective(tmp_path, capsys):
    from offshelf.cli import main

    assert main(["generate", "--pipeline", str(tmp_path), "--prompt", "x", "--objective", "clip",
                 "--out", str(tmp_path / "o")]) == 2
    assert "--objective clip needs --clip-model" in capsys.readouterr().err


@pytest.mark.parametrize("scheduler, scales", [("DDIMScheduler-v_prediction", (0.0, 0.1, 0.3)),
                                              ("DPMSolverMultistepScheduler-epsilon", (0.0, 30.0, 300.0))])
def test_other_schedulers_and_parameterisations(pipelines, scheduler, scales):
    """SD with DDIM in v-prediction (a v-trained model's config) and DPM-Solver++: scale 0 is the
    pipeline's own output bitwise, and the reward rises with the scale (DDIM's deterministic
    steps from the random v-model reach the reward's plateau near scale 1: smaller scales)."""
    import offshelf

    name, kind = scheduler.split("-")
    base = pipelines["sd"]
    config = {k: v for k, v in base.scheduler.config.items() if not k.startswith("_")}
    pipe = diffusers.StableDiffusionPipeline.from_pipe(
        base, scheduler=getattr(diffusers, name).from_config(config, prediction_type=kind))
    assert torch.equal(call(offshelf.guide(pipe, mse_reward, scale=0.0), "sd"), call(pipe, "sd"))
    rewards = torch.stack([mse_reward(call(offshelf.guide(pipe, mse_reward, scale=s), "sd") * 2 - 1)
                           for s in scales])
    assert (rewards[1:] > rewards[:-1]).all(), rewards


def test_flux_true_cfg_gets_the_steps_guidance_on_both_calls(pipelines):
    """Flux's true CFG calls the transformer twice a step (prompt, then negative prompt): the
    step's Δ is computed once and added to both, so the combination moves by Δ as well."""
    import offshelf

    pipe = pipelines["flux"]
    options = dict(negative_prompt=["blurry", "dark"], true_cfg_scale=2.0)
    assert torch.equal(call(offshelf.guide(pipe, mse_reward, scale=0.0), "flux", **options),
                       call(pipe, "flux", **options))
    calls = []
    rewards = []
    for scale in (0.0, 0.03, 0.1):
        guided = offshelf.guide(pipe, mse_reward, scale=scale, callback=lambda **info: calls.append(info["step"]))
        rewards.append(mse_reward(call(guided, "flux", **options) * 2 - 1))
    assert calls == [0, 1, 2, 0, 1, 2]  # one gradient per step, not per transformer call
    rewards = torch.stack(rewards)
    assert (rewards[1:] > rewards[:-1]).all(), rewards


def test_flux_latents_are_unpacked_as_the_pipeline_unpacks_them():
    """The decoder sees Flux's packed tokens exactly as FluxPipeline decodes them."""
    from offshelf.integrations.text2image_pipelines import unpack_flux_latents

    latents = torch.randn(2, 16, 6, 10)  # (B, C, H, W) latents, 2×2 patches
    packed = diffusers.FluxPipeline._pack_latents(latents, 2, 16, 6, 10)
    ids = diffusers.FluxPipeline._prepare_latent_image_ids(2, 3, 5, "cpu", torch.float32)
    assert torch.equal(unpack_flux_latents(packed, ids), latents)
    assert torch.equal(unpack_flux_latents(packed, ids),
                       diffusers.FluxPipeline._unpack_latents(packed, 6 * 8, 10 * 8, 8))


@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "FlowMatchHeunDiscreteScheduler"])
def test_two_call_schedulers_are_refused_by_name(pipelines, name):
    """Heun-type schedulers (order 2: two model calls per step at two noise levels) are refused in
    one line naming the scheduler, by guide() and again when swapped into a guided copy later (the
    correction is computed once per step index: it cannot serve two calls at two sigmas)."""
    import offshelf

    family = "sd3" if name.startswith("FlowMatch") else "sd"
    base = pipelines[family]
    config = {k: v for k, v in base.scheduler.config.items() if not k.startswith("_")}
    scheduler = getattr(diffusers, name).from_config(config)
    assert scheduler.order == 2
    pipe = type(base).from_pipe(base, scheduler=scheduler)
    with pytest.raises(ValueError, match=f"^{name} is not supported by offshelf guidance") as refused:
        offshelf.guide(pipe, mse_reward, scale=1.0)
    assert "\n" not in str(refused.value)
    guided = offshelf.guide(base, mse_reward, scale=1.0)
    guided.scheduler = scheduler
    with pytest.raises(ValueError, match=f"^{name} is not supported by offshelf guidance"):
        call(guided, family)


def _step_predictions(pipe, family, **options):
    """Every (uncond, cond) denoiser output of a plain pipeline call, per step, via a forward hook."""
    outputs = []
    model = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    handle = model.register_forward_hook(lambda module, args, out: outputs.append(out[0].detach().clone()))
    try:
        call(pipe, family, **options)
    finally:
        handle.remove()
    return outputs


def test_sdxl_guidance_rescale_scale_zero_is_bitwise_and_x0_is_read_after_the_rescale(pipelines):
    """SDXL with guidance_rescale = 0.7: scale 0 is the pipeline's own output bitwise; the guidance
    (and the observer) read x̂0 from the prediction the scheduler integrates, the CFG combination
    *after* diffusers' rescale_noise_cfg (checked at the first step against the plain pipeline's
    own denoiser outputs, recombined by hand); the scheduler then integrates exactly the guided
    prediction (the correction applied after the CFG and the rescale); the reward still rises
    with the scale."""
    import offshelf
    from diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl import rescale_noise_cfg

    pipe = pipelines["sdxl"]
    rescale = dict(guidance_rescale=0.7)
    own = call(pipe, "sdxl", **rescale)
    assert not torch.equal(own, call(pipe, "sdxl"))  # the rescale acts on this pipeline
    assert torch.equal(call(offshelf.guide(pipe, mse_reward, scale=0.0), "sdxl", **rescale), own)

    first = _step_predictions(pipe, "sdxl", **rescale)[0].float()
    uncond, cond = first.chunk(2)
    expected = rescale_noise_cfg(uncond + 4.0 * (cond - uncond), cond, guidance_rescale=0.7)
    scheduler = copy_scheduler_for(pipe)
    sigma = float(scheduler.sigmas[0])
    seen, integrated = [], []
    guided = offshelf.guide(pipe, mse_reward, scale=30.0, callback=lambda **info: seen.append(info))
    step = guided.scheduler.step
    guided.scheduler.step = lambda output, *args, **kwargs: (integrated.append(output.clone()),
                                                             step(output, *args, **kwargs))[1]
    call(guided, "sdxl", **rescale)
    latents = seen[0]["pred_xstart"]
    # Euler, ε-prediction: model input x = z/√(σ²+1); x̂0 = z − σ·ε = √(σ²+1)·x − σ·ε
    x_in = _first_model_input(pipe, "sdxl", **rescale)
    a, b = 1 / (1 + sigma ** 2) ** 0.5, sigma / (1 + sigma ** 2) ** 0.5
    torch.testing.assert_close(latents, (x_in - b * expected) / a, rtol=1e-5, atol=1e-4)
    # the scheduler integrates the guided prediction ε' = ε − (a/b)·κ·g: the correction lands after
    # the pipeline's CFG and rescale, not rescaled with them
    guided_eps = expected - (a / b) * seen[0]["weight"] * seen[0]["grad"]
    assert (guided_eps - expected).abs().max() > 1e-2  # the correction is not negligible here
    torch.testing.assert_close(integrated[0], guided_eps, rtol=1e-5, atol=1e-5)
    rewards = torch.stack([mse_reward(call(offshelf.guide(pipe, mse_reward, scale=s), "sdxl", **rescale) * 2 - 1)
                           for s in (0.0, 30.0, 300.0)])
    assert (rewards[1:] > rewards[:-1]).all(), rewards


def copy_scheduler_for(pipe):
    scheduler = copy.deepcopy(pipe.scheduler)
    scheduler.set_timesteps(3)
    return scheduler


def _first_model_input(pipe, family, **options):
    inputs = []
    model = pipe.unet if family in ("sd", "sdxl") else pipe.transformer
    handle = model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        call(pipe, family, **options)
    finally:
        handle.remove()
    return inputs[0][len(inputs[0]) // 2:].float()


@pytest.mark.parametrize("family", FAMILIES)
def test_observer_sees_every_steps_x0_and_changes_nothing(pipelines, family):
    """observe= sees x̂0 once per step (every step, at scale 0 as well) and the pipeline's VAE as
    ``decode``; the output is still the pipeline's own, bitwise; with guidance on, the observed x̂0
    is the one the guidance took its gradient at."""
    import offshelf

    pipe = pipelines[family]
    steps, decoded = [], []

    def observe(step, pred_xstart, decode):
        steps.append(step)
        decoded.append(decode(pred_xstart))

    unguided = call(offshelf.guide(pipe, mse_reward, scale=0.0, observe=observe), family)
    assert torch.equal(unguided, call(pipe, family))
    assert steps == [0, 1, 2] and all(d.shape == (2, 3, SIZE, SIZE) and d.abs().max() <= 1 for d in decoded)
    observed, seen = [], []
    guided = offshelf.guide(pipe, mse_reward, scale=0.05, every=2,
                            observe=lambda step, pred_xstart, decode: observed.append((step, pred_xstart)),
                            callback=lambda **info: seen.append(info))
    call(guided, family)
    assert [s for s, _ in observed] == [0, 1, 2] and [info["step"] for info in seen] == [0, 2]
    assert torch.equal(observed[2][1], seen[1]["pred_xstart"])

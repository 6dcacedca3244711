"""DiT backbone + Algorithm 3 sampler, offline, on tiny random diffusers models saved and
reloaded through the same code path as the hub checkpoints."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

diffusers = pytest.importorskip("diffusers")

from offshelf.backbones.dit import (DiTDenoiser, diffusers_to_original, load_dit, load_dit_original,  # noqa: E402
                                    load_vae, match_original_dit, original_to_diffusers)
from offshelf.guidance import ClassifierGuidance, Guidance, calibrated_log_prob  # noqa: E402
from offshelf.samplers.dit import cfg_denoise, decode, dit_diffusion, dit_sample, dit_step  # noqa: E402
from offshelf.seeding import StackedRandomGenerator  # noqa: E402

NUM_CLASSES, HEADS = 10, 2
LATENT = (4, 8, 8)


def tiny_transformer(seed=0):
    torch.manual_seed(seed)
    model = diffusers.DiTTransformer2DModel(
        num_attention_heads=HEADS, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
        sample_size=8, patch_size=2, num_embeds_ada_norm=NUM_CLASSES)
    with torch.no_grad():  # DiT zero-inits its adaLN / output layers; randomise everything
        for p in model.parameters():
            p.normal_(0, 0.2)
        first = model.transformer_blocks[0].norm1.emb.state_dict()
        for block in model.transformer_blocks[1:]:  # original DiT shares one t/y embedder
            block.norm1.emb.load_state_dict(first)
    return model.eval()


def tiny_vae(seed=1):
    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=16).eval()


def tiny_classifier(seed=2):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Softplus(beta=3), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                         nn.Softplus(beta=3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, NUM_CLASSES)).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    tiny_transformer().save_pretrained(root / "pipe" / "transformer")
    tiny_vae().save_pretrained(root / "pipe" / "vae")
    return root


@pytest.fixture(scope="module")
def parts(saved):
    model = DiTDenoiser(load_dit(saved / "pipe" / "transformer"))
    vae = load_vae(saved / "pipe" / "vae")
    return model, vae


def original_dit_forward(sd, x, t, y, heads):
    """facebookresearch/DiT's forward, written from its models.py semantics on original keys."""
    hidden, _, p, _ = sd["x_embedder.proj.weight"].shape
    h = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=p)
    grid = h.shape[-1]
    h = h.flatten(2).transpose(1, 2) + sd["pos_embed"]
    freqs = torch.exp(-math.log(10000) * torch.arange(128, dtype=torch.float32) / 128)
    args = t[:, None].float() * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    temb = F.linear(F.silu(F.linear(temb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    ln = lambda u: F.layer_norm(u, (hidden,), eps=1e-6)  # noqa: E731
    i = 0
    while f"blocks.{i}.attn.qkv.weight" in sd:
        b = f"blocks.{i}."
        sm, cm, gm, sf, cf, gf = F.linear(F.silu(c), sd[b + "adaLN_modulation.1.weight"],
                                          sd[b + "adaLN_modulation.1.bias"]).chunk(6, dim=1)
        a = ln(h) * (1 + cm[:, None]) + sm[:, None]
        qkv = F.linear(a, sd[b + "attn.qkv.weight"], sd[b + "attn.qkv.bias"])
        q, k, v = qkv.view(*a.shape[:2], 3, heads, hidden // heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(a.shape)
        h = h + gm[:, None] * F.linear(att, sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"])
        m = ln(h) * (1 + cf[:, None]) + sf[:, None]
        m = F.gelu(F.linear(m, sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"]), approximate="tanh")
        h = h + gf[:, None] * F.linear(m, sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"])
        i += 1
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)
    h = F.linear(ln(h) * (1 + scale[:, None]) + shift[:, None], sd["final_layer.linear.weight"],
                 sd["final_layer.linear.bias"])
    out_c = h.shape[-1] // (p * p)
    h = h.reshape(x.shape[0], grid, grid, p, p, out_c)
    return torch.einsum("nhwpqc->nchpwq", h).reshape(x.shape[0], out_c, grid * p, grid * p)


def _inputs(batch=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, *LATENT, generator=g), torch.tensor([999, 500, 3][:batch]),
            torch.tensor([1, 7, NUM_CLASSES][:batch]))


def test_load_dit_and_vae_from_saved_folders(saved):
    reference = match_original_dit(tiny_transformer())
    x, t, y = _inputs()
    want = reference(x, timestep=t, class_labels=y).sample
    for source in (saved / "pipe" / "transformer", saved / "pipe"):  # model folder, pipeline folder
        got = DiTDenoiser(load_dit(source))(x, t, y)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    vae = load_vae(saved / "pipe")
    z = torch.randn(2, *LATENT)
    torch.testing.assert_close(decode(vae, z), tiny_vae().decode(z / 0.18215).sample.clamp(-1, 1))
    assert decode(vae, z).shape == (2, 3, 16, 16)


def test_original_checkpoint_round_trip_and_reference_forward(tmp_path):
    model = tiny_transformer()
    original = diffusers_to_original(model.state_dict(), model.pos_embed.pos_embed.clone())
    assert "blocks.1.attn.qkv.weight" in original and "y_embedder.embedding_table.weight" in original
    back = original_to_diffusers(original)
    assert back.keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(back[key], value), key
    torch.save({"ema": original}, tmp_path / "dit.pt")
    loaded = load_dit_original(tmp_path / "dit.pt", num_heads=HEADS)
    x, t, y = _inputs()
    got = DiTDenoiser(loaded)(x, t, y)
    torch.testing.assert_close(got, DiTDenoiser(match_original_dit(model))(x, t, y), rtol=0, atol=0)
    # the converted diffusers model computes what the original DiT network computes
    torch.testing.assert_close(got, original_dit_forward(original, x, t, y, HEADS), rtol=1e-4, atol=1e-5)
    # ... which diffusers' stock timestep embedding (i/127 frequencies) and LN eps would not
    stock = DiTDenoiser(tiny_transformer())(x, t, y)
    assert (stock - got).abs().max() > 1e-3


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_dit(tmp_path)
    torch.save({"foo": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt.*x_embedder.proj.weight"):
        load_dit_original(tmp_path / "bad.pt")
    plain = diffusers.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, num_layers=1,
                                            sample_size=8, num_embeds_ada_norm=NUM_CLASSES)
    with pytest.raises(ValueError, match="learned-range"):
        DiTDenoiser(plain)


def test_cfg_touches_first_three_eps_channels_only(parts):
    model, _ = parts
    x, t, y = _inputs(batch=2)
    w = 4.0
    out = cfg_denoise(model, x, t, y, model.null_label, w).output
    cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, NUM_CLASSES))
    torch.testing.assert_close(out[:, :3], uncond[:, :3] + w * (cond[:, :3] - uncond[:, :3]))
    torch.testing.assert_close(out[:, 3], cond[:, 3])  # 4th ε channel: conditional
    torch.testing.assert_close(out[:, 4:], cond[:, 4:])  # learned variance: conditional
    assert (cond[:, :3] - uncond[:, :3]).abs().max() > 1e-3  # the rule is not vacuous


@pytest.mark.parametrize("schedule", ["adm", "sine"])
def test_sampling_with_and_without_guidance(parts, schedule):
    model, vae = parts
    diffusion = dit_diffusion("10")
    y = torch.tensor([2, 7])
    guidance = ClassifierGuidance(tiny_classifier(), joint_temperature=1.0, marginal_temperature=0.5)
    steps = []
    base = dit_sample(model, StackedRandomGenerator([0, 1]), diffusion, vae=vae, latent_shape=LATENT, y=y)
    guided = dit_sample(model, StackedRandomGenerator([0, 1]), diffusion,
                        guidance=Guidance(guidance, scale=0.5, sine_factor=0.3, schedule=schedule),
                        callback=lambda **kw: steps.append(kw), vae=vae, latent_shape=LATENT, y=y)
    for img in (base, guided):
        assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all() and img.abs().max() <= 1
    assert (guided - base).abs().max() > 1e-4
    assert [s["step"] for s in steps] == list(range(9, -1, -1))
    for s in steps:  # ĝ is rescaled to the CFG difference per sample, on the 3 CFG channels
        z = s["x_t"]
        t = diffusion.model_timesteps(s["step"], 2, z.device)
        delta = cfg_denoise(model, z, t, y, model.null_label, 1.5).delta
        assert s["grad"].shape == (2, 3, 8, 8)
        torch.testing.assert_close(s["grad"].flatten(1).norm(dim=1), delta.flatten(1).norm(dim=1))


def test_guided_step_raises_target_logit(parts):
    model, vae = parts
    diffusion = dit_diffusion("10")
    classifier = tiny_classifier()
    y, target = torch.tensor([2, 7]), torch.tensor([4, 1])
    # τ2 = 0: log p̃ = f_y − log K, so the ascended quantity is the raw target logit
    guidance = ClassifierGuidance(classifier, joint_temperature=1.0, marginal_temperature=0.0)
    z = StackedRandomGenerator([3, 4]).randn(LATENT)
    noise = torch.zeros_like(z)
    k = 6
    plain_prev, plain = dit_step(model, vae, diffusion, z, k, y, noise)
    guided_prev, guided = dit_step(model, vae, diffusion, z, k, y, noise, guidance=Guidance(
        guidance, scale=1e-3, sine_factor=0.3, schedule="sine", label=target))
    torch.testing.assert_close(plain["pred_xstart"], guided["pred_xstart"])
    assert not torch.equal(plain_prev, guided_prev)
    # only the CFG channels move
    assert torch.equal(plain["pred_xstart"][:, 3], guided["guided_xstart"][:, 3])

    def target_logit(x0):
        return classifier(decode(vae, x0)).gather(1, target[:, None])[:, 0]

    with torch.no_grad():
        gain = target_logit(guided["guided_xstart"]) - target_logit(plain["pred_xstart"])
    assert (gain > 0).all(), gain
    # first order: the gain matches ⟨∇_{ẑ0} f_y, Δẑ0⟩
    with torch.enable_grad():
        x0 = plain["pred_xstart"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(target_logit(x0).sum(), x0)
    predicted = (g * (guided["guided_xstart"] - plain["pred_xstart"])).flatten(1).sum(1)
    torch.testing.assert_close(gain, predicted, rtol=0.05, atol=1e-7)
    # the calibrated log-prob (τ2 > 0) also rises under its own guidance
    calibrated = ClassifierGuidance(classifier, joint_temperature=1.0, marginal_temperature=0.5)
    _, info = dit_step(model, vae, diffusion, z, k, y, noise, guidance=Guidance(
        calibrated, scale=1e-3, sine_factor=0.3, schedule="sine", label=target))
    with torch.no_grad():
        lp = lambda x0: calibrated_log_prob(classifier(decode(vae, x0)), target, 1.0, 0.5)  # noqa: E731
        assert (lp(info["guided_xstart"]) > lp(info["pred_xstart"])).all()


def test_sampling_is_deterministic_per_seed(parts):
    model, vae = parts
    diffusion = dit_diffusion("5")
    guidance = ClassifierGuidance(tiny_classifier(), joint_temperature=1.0, marginal_temperature=0.5)
    run = lambda seeds, y: dit_sample(model, StackedRandomGenerator(seeds), diffusion,  # noqa: E731
                                      guidance=Guidance(guidance, sine_factor=0.3), vae=vae,
                                      latent_shape=LATENT, y=torch.tensor(y), return_latents=True)
    a_img, a_z = run([11, 12], [3, 5])
    b_img, b_z = run([11, 12], [3, 5])
    assert torch.equal(a_img, b_img) and torch.equal(a_z, b_z)
    alone_img, alone_z = run([12], [5])  # a shard of one seed reproduces its sample
    torch.testing.assert_close(alone_z[0], a_z[1], rtol=1e-3, atol=2e-4)  # batch-size rounding only
    c_img, _ = run([13, 12], [3, 5])
    assert not torch.allclose(c_img[0], a_img[0])

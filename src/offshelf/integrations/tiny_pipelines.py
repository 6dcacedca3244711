"""Random text-to-image pipelines of each family from small configs, nothing downloaded: Stable
Diffusion (UNet2DConditionModel + CLIPTextModel + AutoencoderKL), SDXL (two text encoders, added
time ids), SD3 (SD3Transformer2DModel, two CLIP encoders and T5) and Flux (FluxTransformer2DModel,
CLIP + T5, packed latents), with tokenizers written from a byte alphabet. For tests
(tests/unit/test_integrations_text2image.py), benchmarks (benchmarks/diffusers_t2i.py) and dry
runs of ``offshelf generate``; ``width`` scales the UNet/VAE channels and the transformer heads.
Needs ``transformers`` (the ``diffusers`` extra).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

FAMILIES = ("sd", "sdxl", "sd3", "flux")


def _bytes_to_unicode():
    """GPT-2's byte ↔ unicode table (CLIP's BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def clip_tokenizer(folder: Path):
    """A CLIPTokenizer over single bytes (no merges): 514 tokens, context 16."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over lowercase letters."""
    import transformers

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(c, -1.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    return transformers.T5Tokenizer(vocab=vocab, extra_ids=0)


def clip_text(projection: bool, seed: int):
    import transformers

    torch.manual_seed(seed)
    config = transformers.CLIPTextConfig(hidden_size=16, intermediate_size=32, num_attention_heads=2,
                                         num_hidden_layers=2, vocab_size=520, max_position_embeddings=16,
                                         projection_dim=16, bos_token_id=514, eos_token_id=515, pad_token_id=515)
    model = transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel
    return model(config).eval()


def t5_encoder(seed: int = 7):
    import transformers

    torch.manual_seed(seed)
    return transformers.T5EncoderModel(transformers.T5Config(vocab_size=40, d_model=32, d_kv=8, d_ff=32, num_layers=1,
                                                             num_heads=2)).eval()


def tiny_vae(seed: int = 3, size: int = 16, width: int = 8, **config):
    """An AutoencoderKL with 4 latent channels and a ×2 downsampling."""
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(width, width),
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, layers_per_block=1,
                                   sample_size=size, **config).eval()


def tiny_taesd(seed: int = 9, width: int = 8):
    """An AutoencoderTiny (TAESD's architecture) for the same 4-channel ×2 latents."""
    import diffusers

    torch.manual_seed(seed)
    return diffusers.AutoencoderTiny(in_channels=3, out_channels=3, latent_channels=4,
                                     encoder_block_out_channels=(width, width),
                                     decoder_block_out_channels=(width, width),
                                     num_encoder_blocks=(1, 1), num_decoder_blocks=(1, 1)).eval()


def _unet(size: int, width: int, **extra):
    import diffusers

    torch.manual_seed(1)
    return diffusers.UNet2DConditionModel(sample_size=size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                          block_out_channels=(width, 2 * width), norm_num_groups=4,
                                          attention_head_dim=4,
                                          down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                          up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **extra).eval()


def build(family: str, folder: Path, size: int = 16, width: int = 8):
    """A random pipeline of ``family`` (one of :data:`FAMILIES`) for ``size``² images; tokenizer
    files go to ``folder``."""
    import diffusers

    folder = Path(folder)
    heads = max(2, width // 4)
    euler = diffusers.EulerDiscreteScheduler(steps_offset=1)
    if family == "sd":
        return diffusers.StableDiffusionPipeline(
            unet=_unet(size, width, cross_attention_dim=16), vae=tiny_vae(size=size, width=width), text_encoder=clip_text(False, 5),
            tokenizer=clip_tokenizer(folder / "tok"), scheduler=euler, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False)
    if family == "sdxl":
        tokenizer = clip_tokenizer(folder / "tok")
        unet = _unet(size, width, cross_attention_dim=32, addition_embed_type="text_time", addition_time_embed_dim=4,
                     projection_class_embeddings_input_dim=16 + 6 * 4)
        return diffusers.StableDiffusionXLPipeline(
            unet=unet, vae=tiny_vae(size=size, width=width), text_encoder=clip_text(False, 5), text_encoder_2=clip_text(True, 6),
            tokenizer=tokenizer, tokenizer_2=tokenizer, scheduler=euler)
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    if family == "sd3":
        torch.manual_seed(1)
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=size // 2, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=heads, joint_attention_dim=32, caption_projection_dim=8 * heads, pooled_projection_dim=32,
            out_channels=4).eval()
        tokenizer = clip_tokenizer(folder / "tok")
        return diffusers.StableDiffusion3Pipeline(
            transformer=transformer, vae=tiny_vae(size=size, width=width, shift_factor=0.1, scaling_factor=1.5),
            text_encoder=clip_text(True, 5), text_encoder_2=clip_text(True, 6), text_encoder_3=t5_encoder(),
            tokenizer=tokenizer, tokenizer_2=tokenizer, tokenizer_3=t5_tokenizer(), scheduler=flow)
    if family == "flux":
        torch.manual_seed(1)
        transformer = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=8,
            num_attention_heads=heads, joint_attention_dim=32, pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)).eval()
        return diffusers.FluxPipeline(
            transformer=transformer, vae=tiny_vae(size=size, width=width, shift_factor=0.1, scaling_factor=1.5),
            text_encoder=clip_text(False, 5), text_encoder_2=t5_encoder(), tokenizer=clip_tokenizer(folder / "tok"),
            tokenizer_2=t5_tokenizer(), scheduler=flow)
    raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")


__all__ = ["FAMILIES", "build", "clip_text", "clip_tokenizer", "t5_encoder", "t5_tokenizer", "tiny_taesd", "tiny_vae"]

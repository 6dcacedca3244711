"""``offshelf generate``: a guided text-to-image pipeline from the command line (docs/diffusers.md).

    offshelf generate --pipeline <folder or hub id> --prompt "a cat" [--prompt ...] \\
        --objective clip | classifier:<torchvision name>:<class> | <module>:<callable> \\
        --scale S [--seeds 0,1] [--steps 30] [--guidance-scale 5] [--out DIR]
    offshelf generate --from-json DIR/generate.json --out DIR2      # the same PNGs, bitwise

One pipeline call renders every prompt × seed (image ``j`` of the batch: prompt ``j % P``, seed
``seeds[j // P]``, its own ``torch.Generator``); the PNGs are ``DIR/<index>_seed<seed>.png`` and
``DIR/generate.json`` records every setting, the seeds, the image files with their SHA-256 and the
library versions. ``--from-json`` reads the settings back (command-line values given as well
override them) and renders the same call again: on the same machine and versions, the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import platform
from pathlib import Path
from typing import Any

#: Settings ``generate.json`` records; the command-line names are these with '-' for '_'.
DEFAULTS: dict[str, Any] = dict(
    pipeline=None, prompt=None, negative_prompt=None, objective=None, target=None, scale=1.0, seeds=[0],
    steps=30, guidance_scale=None, height=None, width=None, sine_factor=0.3, schedule="adm", window=[0.0, 1.0],
    every=1, decoder="vae", decoder_chunk=None, checkpoint=False, scheduler=None, clip_model=None,
    softplus_beta=3.0, joint_temperature=1.0, marginal_temperature=0.5, device="cpu", dtype="float32",
)


def add_parser(commands) -> argparse.ArgumentParser:
    """Register ``generate`` on the ``offshelf`` command's subparsers."""
    p = commands.add_parser("generate", help="guided text-to-image generation with a diffusers pipeline (PNGs + JSON)")
    p.add_argument("--pipeline", help="a diffusers pipeline folder or hub id (SD, SDXL, SD3, Flux, ...)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--negative-prompt", action="append", help="one per prompt, or one for all")
    p.add_argument("--objective", help="clip | classifier:<torchvision name>:<class> | <module>:<callable> (a reward "
                                       "of images in [-1, 1], one scalar per image)")
    p.add_argument("--scale", type=float, help="guidance scale s (0: the pipeline's own output)")
    p.add_argument("--seeds", help="comma-separated seeds, one image per prompt and seed (default 0)")
    p.add_argument("--steps", type=int, help="num_inference_steps (default 30)")
    p.add_argument("--guidance-scale", type=float, help="the pipeline's own CFG scale (default: the pipeline's)")
    p.add_argument("--height", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--sine-factor", type=float, help="γ of the sine bump (default 0.3)")
    p.add_argument("--schedule", choices=["adm", "score"])
    p.add_argument("--window", type=float, nargs=2, metavar=("START", "END"), help="guided fraction of the steps")
    p.add_argument("--every", type=int, help="guide every k-th step")
    p.add_argument("--decoder", help="vae (default) | tiny (TAESD) | a folder with an AutoencoderTiny")
    p.add_argument("--decoder-chunk", type=int, help="decoder backward in chunks of this many images")
    p.add_argument("--checkpoint", action="store_true", default=None, help="gradient checkpointing in the decoder")
    p.add_argument("--scheduler", help="swap the pipeline's scheduler for this diffusers class (its config kept)")
    p.add_argument("--clip-model", help="open_clip <arch>:<pretrained> for --objective clip")
    p.add_argument("--softplus-beta", type=float)
    p.add_argument("--joint-temperature", type=float)
    p.add_argument("--marginal-temperature", type=float)
    p.add_argument("--device")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--from-json", help="a generate.json: its settings (command-line values override them)")
    p.add_argument("--out", required=True, help="the output folder")
    p.set_defaults(run=run)
    return p


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    """The run's settings: defaults, then ``--from-json``'s, then those given on the command line."""
    settings = dict(DEFAULTS)
    if args.from_json:
        recorded = json.loads(Path(args.from_json).read_text())["settings"]
        unknown = set(recorded) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"--from-json {args.from_json}: unknown settings {sorted(unknown)}")
        settings.update(recorded)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            settings[key] = value
    if isinstance(settings["seeds"], str):
        try:
            settings["seeds"] = [int(s) for s in settings["seeds"].split(",") if s.strip()]
        except ValueError:
            raise ValueError(f"--seeds: comma-separated integers expected, got {settings['seeds']!r}") from None
    settings["window"] = [float(v) for v in settings["window"]]
    for key in ("pipeline", "prompt", "objective"):
        if not settings[key]:
            raise ValueError(f"--{key.replace('_', '-')} is required (or --from-json)")
    return settings


def _objective(settings: dict[str, Any]) -> tuple[Any, dict]:
    """``(objective, guide keywords)`` from ``--objective``."""
    spec = settings["objective"]
    if spec == "clip":
        if not settings["clip_model"]:
            raise ValueError("--objective clip needs --clip-model <arch>:<pretrained> (open_clip names)")
        return "clip", {"clip": settings["clip_model"]}
    if spec.startswith("classifier:"):
        parts = spec.split(":")
        if len(parts) != 3:
            raise ValueError(f"--objective {spec!r}: expected classifier:<torchvision name>:<class index>")
        from offshelf.classifiers.zoo import IMAGENET_MEAN, IMAGENET_STD, load_classifier
        from offshelf.guidance import InputAdapter

        return load_classifier(parts[1]), {"target": int(parts[2]),
                                           "adapter": InputAdapter(224, IMAGENET_MEAN, IMAGENET_STD)}
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--objective {spec!r}: expected clip, classifier:<name>:<class> or <module>:<callable>")
    try:
        return getattr(importlib.import_module(module), name), {}
    except (ImportError, AttributeError) as e:
        raise ValueError(f"--objective {spec!r}: cannot import {name} from {module}: {e}") from None


def load_pipeline(settings: dict[str, Any]):
    import diffusers
    import torch

    dtype = getattr(torch, settings["dtype"])
    options = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = diffusers.DiffusionPipeline.from_pretrained(settings["pipeline"], **options)
    if settings["scheduler"]:
        pipe.scheduler = getattr(diffusers, settings["scheduler"]).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(settings["device"])


def _decoder(settings: dict[str, Any], pipe):
    decoder = settings["decoder"]
    if decoder in ("vae", "tiny"):
        return decoder
    import diffusers

    return diffusers.AutoencoderTiny.from_pretrained(decoder, torch_dtype=pipe.vae.dtype).to(pipe.vae.device)


def generate(settings: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Render ``settings`` into ``out`` (module docstring); returns the record written to
    ``out/generate.json``."""
    import diffusers
    import torch
    import transformers

    import offshelf

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    objective, extra = _objective(settings)  # a bad --objective fails before the pipeline loads
    pipe = load_pipeline(settings)
    guided = offshelf.guide(pipe, objective, scale=settings["scale"], sine_factor=settings["sine_factor"],
                            schedule=settings["schedule"], window=tuple(settings["window"]), every=settings["every"],
                            decoder=_decoder(settings, pipe), decoder_chunk=settings["decoder_chunk"],
                            checkpoint=bool(settings["checkpoint"]), softplus_beta=settings["softplus_beta"],
                            joint_temperature=settings["joint_temperature"],
                            marginal_temperature=settings["marginal_temperature"], **extra)
    prompts, seeds = list(settings["prompt"]), list(settings["seeds"])
    batch_prompts = prompts * len(seeds)
    batch_seeds = [seed for seed in seeds for _ in prompts]
    call: dict[str, Any] = dict(num_inference_steps=settings["steps"], output_type="pil",
                                generator=[torch.Generator(settings["device"]).manual_seed(s) for s in batch_seeds])
    negative = settings["negative_prompt"]
    if negative:
        if len(negative) not in (1, len(prompts)):
            raise ValueError(f"--negative-prompt: give one, or one per prompt ({len(prompts)}), got {len(negative)}")
        call["negative_prompt"] = (negative * len(prompts) if len(negative) == 1 else list(negative)) * len(seeds)
    for key in ("guidance_scale", "height", "width"):
        if settings[key] is not None:
            call[key] = settings[key]
    images = guided(batch_prompts, **call).images
    files = []
    for j, (image, prompt, seed) in enumerate(zip(images, batch_prompts, batch_seeds)):
        path = out / f"{j:03d}_seed{seed}.png"
        image.save(path)
        files.append(dict(file=path.name, prompt=prompt, seed=seed,
                          sha256=hashlib.sha256(path.read_bytes()).hexdigest()))
    record = dict(settings=settings, images=files, pipeline_class=type(pipe).__name__,
                  scheduler=type(pipe.scheduler).__name__,
                  versions=dict(offshelf=offshelf.__version__, torch=torch.__version__,
                                diffusers=diffusers.__version__, transformers=transformers.__version__,
                                python=platform.python_version()))
    (out / "generate.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def run(args: argparse.Namespace) -> int:
    record = generate(settings_of(args), args.out)
    print(f"{len(record['images'])} images and generate.json in {args.out}")
    return 0


__all__ = ["DEFAULTS", "add_parser", "generate", "load_pipeline", "run", "settings_of"]

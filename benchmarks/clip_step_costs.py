"""Cost of one CLIP-guided DDPM step (paper Sec. 5.4): one denoiser call, one CLIP forward+backward,
and one whole guided step, median seconds over repeats. Time per image is then
``T · r · step_s / batch`` for T steps and r recurrent passes (docs/clip.md).

    python benchmarks/clip_step_costs.py --small            # tests' tiny models, 24 and 256 px
    python benchmarks/clip_step_costs.py --paper --device cuda --batch 1 4 8   # ADM-256 + ViT-L/14@336, random weights
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from offshelf.classifiers.clip import CLIPPromptClassifier, build_random_clip
from offshelf.diffusion import GaussianDiffusion
from offshelf.seeding import StackedRandomGenerator
from offshelf.text2image import clip_guidance


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_step_costs(model, diffusion: GaussianDiffusion, clip_classifier: CLIPPromptClassifier, batch: int,
                       image_size: int, device: str | torch.device = "cpu", repeats: int = 3) -> dict[str, float]:
    device = torch.device(device)
    x = torch.randn(batch, 3, image_size, image_size, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device)
    k = diffusion.num_steps // 2
    t = diffusion.model_timesteps(k, batch, device)
    guidance = clip_guidance(clip_classifier)

    def timed(fn):
        fn()  # warm-up
        costs = []
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            costs.append(time.perf_counter() - start)
        return float(np.median(costs))

    def denoise():
        with torch.no_grad():
            return model(x, t, None)

    def clip_grad():
        return guidance.gradient(x.clamp(-1, 1), labels)

    def step():
        rng = StackedRandomGenerator(range(batch), device)
        with torch.no_grad():
            out = diffusion.p_mean_variance(model(x, t, None), x, k)
        grad, _ = guidance.gradient(out.pred_xstart, labels)
        return out.mean + out.variance * grad + out.variance.sqrt() * rng.randn_like(x)

    return dict(batch=batch, image_size=image_size, denoiser_s=timed(denoise), clip_fwd_bwd_s=timed(clip_grad),
                step_s=timed(step))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--small", action="store_true", help="the tests' tiny CLIP and ε-network")
    which.add_argument("--paper", action="store_true", help="ADM-256 unconditional + ViT-L-14-336, random weights")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[4])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1) if args.small else None
    prompts = ["Van Gogh style cat", "ice frog"]
    if args.small:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from test_clip import PROMPTS, SMALL_CLIP, TinyEps

        clf = CLIPPromptClassifier(*build_random_clip(SMALL_CLIP), PROMPTS)
        diffusion = GaussianDiffusion.respaced(1000, "250", "linear", "fixed_large")
        runs = [(TinyEps().eval(), size) for size in (24, 256)]
    else:
        from offshelf.backbones.adm import build_adm

        clip, tokenizer = build_random_clip("ViT-L-14-336-quickgelu")
        clf = CLIPPromptClassifier(clip.to(args.device), tokenizer, prompts)
        diffusion = GaussianDiffusion.respaced(1000, "250", "linear", "learned_range")
        runs = [(build_adm("adm_imagenet256_uncond_diffusion", device=args.device), 256)]
    for model, size in runs:
        for batch in args.batch:
            print(json.dumps(measure_step_costs(model, diffusion, clf, batch, size, args.device, args.repeats)))


if __name__ == "__main__":
    main()

"""offshelf's DDPM sampler against guided-diffusion's own ``p_sample_loop``, side by side on CPU.

Both run the same process on the same networks in one Python process:

* the denoiser: the tiny ADM golden fixture (``tests/fixtures/reference/adm_tiny_golden.pt``:
  guided-diffusion ``create_model`` flags and weights, 32×32, learned range, class conditional),
  built by guided-diffusion's own ``create_model`` for its loop and by offshelf's ``create_unet``
  for offshelf's, both loading that state dict;
* the schedule: 1000 linear steps respaced to ``--steps`` (guided-diffusion's
  ``create_gaussian_diffusion(timestep_respacing=...)`` / ``GaussianDiffusion.respaced``);
* guided: guided-diffusion's classifier guidance exactly as its ``scripts/classifier_sample.py``
  writes ``cond_fn`` (``∇_{x_t} log_softmax(f(x_t, t))_y · s``, mean shifted by Σ·g), and the same
  in offshelf's terms: ``ClassifierGuidance(input="xt", time_conditioned=True)`` with τ1 = τ2 = 1
  and ``Guidance(scale=s, sine_factor=0)``, so Eq. 5's weight is Σ_t. One classifier instance (a
  tiny ADM ``EncoderUNetModel``, random weights) serves both loops: its cost is the same by
  construction.

Before timing, one guided step at k = steps // 2 from the same x_k with the same noise must agree
within ``--check-atol`` in both, and guidance must move it by more than that, so the two loops are
timed doing the same guided work. What still differs by design:
offshelf draws each sample's noise from its own generator (a sample depends on its seed only),
guided-diffusion draws the batch from the global generator; offshelf records each step's finite
counts for its non-finite guard.

Timing: the four cases (guided-diffusion / offshelf × unguided / guided) run once per round in a
shuffled order, ``--rounds`` rounds after the check above (which runs every network once at this
batch: the warm-up); each case's minimum over rounds is its
time (the least disturbed run on a shared machine), and the ratio is offshelf's minimum over
guided-diffusion's. Wall and process CPU time are both recorded.

    GUIDED_DIFFUSION_DIR=/path/to/guided-diffusion python benchmarks/guided_diffusion_loop.py \
        --batch 16 --steps 50 --rounds 5 --out benchmarks/guided_diffusion_loop.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

from offshelf.backbones.adm import EncoderUNetModel, create_unet
from offshelf.diffusion import GaussianDiffusion
from offshelf.guidance import ClassifierGuidance, Guidance
from offshelf.samplers.ddpm import ddpm_sample, ddpm_step
from offshelf.seeding import StackedRandomGenerator

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "reference" / "adm_tiny_golden.pt"
CLASSIFIER_SCALE = 10.0  # a push well above float32 rounding, for the check; the timing does not depend on it
CASES = ("guided_diffusion_unguided", "offshelf_unguided", "guided_diffusion_guided", "offshelf_guided")


def import_guided_diffusion(checkout: Path):
    """guided-diffusion's diffusion and model code from a checkout (its training and data modules
    need blobfile and mpi4py; these do not)."""
    if not (checkout / "guided_diffusion" / "gaussian_diffusion.py").is_file():
        raise SystemExit(f"guided_diffusion_loop: {checkout} is not a guided-diffusion checkout "
                         f"(expected guided_diffusion/gaussian_diffusion.py in it); set GUIDED_DIFFUSION_DIR "
                         f"or --guided-diffusion to a clone of github.com/openai/guided-diffusion")
    sys.path.insert(0, str(checkout))
    from guided_diffusion import script_util
    return script_util


def tiny_classifier(flags: dict) -> EncoderUNetModel:
    """A time-conditioned ADM encoder classifier at the fixture's resolution, random weights.

    Every weight is drawn afresh: ADM zero-initialises its output layers, which would make the
    logits constant and the gradient zero, so that guided and unguided steps could not be told apart."""
    torch.manual_seed(0)
    classifier = EncoderUNetModel(image_size=flags["image_size"], in_channels=3, model_channels=32, out_channels=1000,
                                  num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 2, 2), num_heads=2,
                                  use_scale_shift_norm=True, resblock_updown=True, pool="adaptive")
    with torch.no_grad():
        for parameter in classifier.parameters():
            parameter.normal_(0, 0.05)
    return classifier.eval().requires_grad_(False)


def build(script_util, batch: int, steps: int):
    golden = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    flags = golden["flags"]
    ours = create_unet(**flags).eval().requires_grad_(False)
    ours.load_state_dict(golden["state_dict"], strict=True)
    theirs = script_util.create_model(**flags).eval().requires_grad_(False)
    theirs.load_state_dict(golden["state_dict"], strict=True)
    classifier = tiny_classifier(flags)
    our_diffusion = GaussianDiffusion.respaced(1000, str(steps), "linear", "learned_range")
    their_diffusion = script_util.create_gaussian_diffusion(steps=1000, learn_sigma=True, noise_schedule="linear",
                                                            timestep_respacing=str(steps))
    shape = (3, flags["image_size"], flags["image_size"])
    y = torch.arange(batch) * 37 % 1000

    def cond_fn(x, t, y=None):  # guided-diffusion scripts/classifier_sample.py, verbatim but for names
        with torch.enable_grad():
            x_in = x.detach().requires_grad_(True)
            logits = classifier(x_in, t)
            log_probs = torch.nn.functional.log_softmax(logits, dim=-1)
            selected = log_probs[range(len(logits)), y.view(-1)]
            return torch.autograd.grad(selected.sum(), x_in)[0] * CLASSIFIER_SCALE

    guidance = Guidance(ClassifierGuidance(classifier, input="xt", time_conditioned=True), scale=CLASSIFIER_SCALE,
                        sine_factor=0.0)
    seeds = range(batch)
    x_T = StackedRandomGenerator(seeds).randn(shape)

    def theirs_loop(guided):
        return their_diffusion.p_sample_loop(theirs, (batch, *shape), noise=x_T, clip_denoised=True,
                                             model_kwargs={"y": y}, cond_fn=cond_fn if guided else None,
                                             device="cpu", progress=False)

    def ours_loop(guided):
        return ddpm_sample(ours, StackedRandomGenerator(seeds), our_diffusion, guidance=guidance if guided else None,
                           shape=shape, y=y)

    cases = {"guided_diffusion_unguided": lambda: theirs_loop(False), "offshelf_unguided": lambda: ours_loop(False),
             "guided_diffusion_guided": lambda: theirs_loop(True), "offshelf_guided": lambda: ours_loop(True)}

    def step_difference() -> tuple[float, float]:
        """``(max |x'_ours − x'_theirs|, max |x'_theirs − x_theirs|)`` of one step at k = steps // 2 from
        the same x_k with the same noise z (offshelf's draw): the loops' difference, and how far
        guidance moves the step. guided-diffusion's step is its ``p_mean_variance`` and
        ``condition_mean`` plus ``exp(½·log Σ)·z``, as in its ``p_sample``."""
        k = steps // 2
        x_k = torch.randn(batch, *shape, generator=torch.Generator().manual_seed(1))
        t = torch.full((batch,), k, dtype=torch.long)
        with torch.no_grad():
            out = their_diffusion.p_mean_variance(theirs, x_k, t, clip_denoised=True, model_kwargs={"y": y})
        guided_mean = their_diffusion.condition_mean(cond_fn, out, x_k, t, model_kwargs={"y": y})
        noise = StackedRandomGenerator(seeds).randn_like(x_k)
        guided_theirs, unguided_theirs = (mean + torch.exp(0.5 * out["log_variance"]) * noise
                                          for mean in (guided_mean, out["mean"]))
        guided_ours, _, _ = ddpm_step(ours, our_diffusion, x_k, k, StackedRandomGenerator(seeds), y=y,
                                      guidance=guidance)
        return (float((guided_ours - guided_theirs).abs().max()),
                float((guided_theirs - unguided_theirs).abs().max()))

    return cases, step_difference


def measure(checkout: Path, batch: int, steps: int, rounds: int, check_atol: float, after_round=None) -> dict:
    """The timings; ``after_round(result)`` sees the result so far after every round (a long run on a
    busy machine keeps what it has measured)."""
    script_util = import_guided_diffusion(checkout)
    cases, step_difference = build(script_util, batch, steps)
    difference, guidance_shift = step_difference()  # also the warm-up: every network at this batch
    if not difference <= check_atol < guidance_shift:
        raise SystemExit(f"guided_diffusion_loop: the two loops' guided step at k={steps // 2} differs by {difference:.3g} "
                         f"and guidance moves it by {guidance_shift:.3g} (--check-atol {check_atol} must lie "
                         f"between): the loops would not be timed doing the same guided work")
    wall = {name: [] for name in CASES}
    cpu = {name: [] for name in CASES}
    order = random.Random(0)
    for done in range(1, rounds + 1):
        names = list(CASES)
        order.shuffle(names)
        for name in names:
            w, c = time.perf_counter(), time.process_time()
            cases[name]()
            wall[name].append(time.perf_counter() - w)
            cpu[name].append(time.process_time() - c)
        result = summary(wall, cpu, batch, steps, done, checkout, difference, guidance_shift)
        if after_round is not None:
            after_round(result)
    return result


def summary(wall: dict, cpu: dict, batch: int, steps: int, rounds: int, checkout: Path, difference: float,
            guidance_shift: float) -> dict:
    best = {name: min(times) for name, times in wall.items()}
    best_cpu = {name: min(times) for name, times in cpu.items()}
    return dict(
        batch=batch, steps=steps, rounds=rounds, torch=torch.__version__, threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(), cpu_count=os.cpu_count(), load_average_end=os.getloadavg(),
        guided_diffusion=str(checkout.name), guided_step_max_abs_difference=difference, guidance_shift=guidance_shift,
        wall_s=wall, cpu_s=cpu, min_wall_s=best, min_cpu_s=best_cpu,
        ratio_unguided=best["offshelf_unguided"] / best["guided_diffusion_unguided"],
        ratio_guided=best["offshelf_guided"] / best["guided_diffusion_guided"],
        ratio_unguided_cpu=best_cpu["offshelf_unguided"] / best_cpu["guided_diffusion_unguided"],
        ratio_guided_cpu=best_cpu["offshelf_guided"] / best_cpu["guided_diffusion_guided"],
        # the minimum rests on one round each; on a machine whose speed drifts, a single lucky round
        # of one loop decides it. The median of each round's own ratio (its four cases run back to
        # back) pairs like with like in time.
        median_round_ratio_unguided=median_round_ratio(wall, "unguided"),
        median_round_ratio_guided=median_round_ratio(wall, "guided"),
    )


def median_round_ratio(wall: dict, kind: str) -> float:
    ratios = sorted(o / g for o, g in zip(wall[f"offshelf_{kind}"], wall[f"guided_diffusion_{kind}"]))
    middle = len(ratios) // 2
    return ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2


def components(checkout: Path, batch: int, repeats: int = 12) -> dict:
    """Where the two loops can differ, each timed alone (process time, interleaved, ``repeats`` times):
    one forward of each network (and whether their outputs are bitwise equal), offshelf's per-sample
    noise against one ``randn_like``, and the guard's ``sum(t·0)`` against the per-step check it
    replaced, ``bool(isfinite(t).all())``, on a denoiser output."""
    script_util = import_guided_diffusion(checkout)
    golden = torch.load(FIXTURE, map_location="cpu", weights_only=True)
    ours = create_unet(**golden["flags"]).eval().requires_grad_(False)
    ours.load_state_dict(golden["state_dict"], strict=True)
    theirs = script_util.create_model(**golden["flags"]).eval().requires_grad_(False)
    theirs.load_state_dict(golden["state_dict"], strict=True)
    size = golden["flags"]["image_size"]
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    t, y = torch.full((batch,), 500), torch.arange(batch)
    rng = StackedRandomGenerator(range(batch))
    with torch.no_grad():
        output = ours(x, t, y)
        parts = {"offshelf_forward": lambda: ours(x, t, y), "guided_diffusion_forward": lambda: theirs(x, t, y),
                 "per_sample_noise": lambda: rng.randn_like(x), "one_randn_like": lambda: torch.randn_like(x),
                 "guard_sum_times_zero": lambda: (output * 0).sum(),
                 "isfinite_all_read": lambda: bool(torch.isfinite(output).all())}
        times = {name: [] for name in parts}
        for _ in range(repeats):
            for name, fn in parts.items():
                start = time.process_time()
                fn()
                times[name].append(time.process_time() - start)
        equal = torch.equal(output, theirs(x, t, y))
    return dict(batch=batch, repeats=repeats, threads=torch.get_num_threads(), load_average_end=os.getloadavg(),
                networks_bitwise_equal=equal, min_ms={n: 1e3 * min(v) for n, v in times.items()},
                median_ms={n: 1e3 * sorted(v)[len(v) // 2] for n, v in times.items()})


def markdown(result: dict) -> str:
    wall, cpu = result["min_wall_s"], result["min_cpu_s"]
    lines = [f"tiny ADM fixture, batch {result['batch']}, {result['steps']} steps, minimum of {result['rounds']} "
             f"interleaved rounds, {result['threads']} torch threads, torch {result['torch']}; load average at the "
             f"end {', '.join(f'{v:.1f}' for v in result['load_average_end'])}; the guided step at k={result['steps'] // 2} agrees "
             f"to {result['guided_step_max_abs_difference']:.1e} (guidance moves it by {result['guidance_shift']:.1e})",
             "",
             "| | guided-diffusion min s | offshelf min s | offshelf / guided-diffusion (wall) | (CPU time) "
             "| median of the rounds' ratios (wall) |",
             "|---|---:|---:|---:|---:|---:|"]
    for kind in ("unguided", "guided"):
        lines.append(f"| {kind} | {wall[f'guided_diffusion_{kind}']:.2f} | {wall[f'offshelf_{kind}']:.2f} | "
                     f"{result[f'ratio_{kind}']:.3f} | {result[f'ratio_{kind}_cpu']:.3f} | "
                     f"{result[f'median_round_ratio_{kind}']:.3f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guided-diffusion", type=Path, default=os.environ.get("GUIDED_DIFFUSION_DIR"),
                        help="a checkout of openai/guided-diffusion (default: $GUIDED_DIFFUSION_DIR)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--check-atol", type=float, default=1e-6)
    parser.add_argument("--components", action="store_true",
                        help="instead of the loops: time each place they can differ alone (see components())")
    parser.add_argument("--out", type=Path, default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.guided_diffusion is None:
        parser.error("no guided-diffusion checkout: set GUIDED_DIFFUSION_DIR or pass --guided-diffusion")
    if args.batch < 1 or args.steps < 1 or args.rounds < 1:
        parser.error("--batch, --steps and --rounds must be >= 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.components:
        result = components(args.guided_diffusion, args.batch)
        print(json.dumps(result, indent=2))
        return

    def after_round(result):
        print(f"round {result['rounds']}: offshelf / guided-diffusion unguided {result['ratio_unguided']:.3f}, "
              f"guided {result['ratio_guided']:.3f}", flush=True)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.out.with_name(f".{args.out.name}.tmp")
            tmp.write_text(json.dumps(result, indent=2))
            os.replace(tmp, args.out)

    result = measure(args.guided_diffusion, args.batch, args.steps, args.rounds, args.check_atol, after_round)
    print(markdown(result))
    if args.out is not None:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""The ``offshelf`` command: the workflow's stages, usable without Snakemake.

    offshelf sample     --config config/ci.yaml --setting "regime=uncond,softplus_beta=3,scale=3" --seeds 0:32 --out s.npz
    offshelf calibrate  --config config/ci.yaml --probe offshelf-x0_sp3 --num-samples 64 --out ece.csv
    offshelf evaluate   --config config/ci.yaml --shards s.npz --out metrics.json
    offshelf tune       --config config.yaml --classifier offshelf --regime uncond --out results/digits/tune/
    offshelf held-out   --folder imagenet/val --resolution 128 --out held_out_128.npz   # tune's images on ImageNet
    offshelf plan       --config config/imagenet128_ddpm.yaml [--costs benchmarks/gpu_throughput.json]
    offshelf checkpoints list | fetch NAME... | verify NAME PATH
    offshelf generate   --pipeline DIR --prompt "a cat" --objective clip --scale 1 --out DIR   # docs/diffusers.md
    offshelf check-config FILE...        # validate each config file (YAML errors with file:line)
    offshelf resume [SNAKEMAKE ARGS...]  # rerun after a killed Snakemake (unlocks stale locks only)
    offshelf text2image --config config/clip_text2image.yaml   # CLIP-guided text-to-image (docs/clip.md)

``python -m offshelf`` is the same command (the one entry point; no module has its own ``main``).

``--config`` takes the backend, its options, the sampling section and the default file locations
(the workflow's trained models under ``results/``, the checkpoint cache) from a workflow config;
``--backend`` / ``--option`` / ``--checkpoint`` / ``--sampling`` give or override them one by one.
The stages are the functions the workflow's scripts call (:mod:`offshelf.stages`), so ``offshelf
sample`` writes the same shard as the workflow's ``sample`` job for the same setting and seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from offshelf.extras import needs

needs(__name__, "yaml")  # offshelf[workflow]
import yaml

PROG = "offshelf"


class ArgumentError(ValueError):
    """A bad command-line value; the message names the argument."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")


def _scalar(text: str) -> Any:
    """A YAML value; a number YAML 1.1 reads as a string (``1e20``) is the number."""
    text = text.strip()
    if text in ("inf", "relu"):
        return text
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _pairs(values: list[str], argument: str, raw: bool = False) -> dict[str, Any]:
    """``KEY=VALUE`` items (values parsed as YAML scalars: 3 → int, 0.5 → float, inf stays 'inf')."""
    out = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ArgumentError(argument, f"{item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = value.strip() if raw else _scalar(value)
        except yaml.YAMLError as err:
            raise ArgumentError(argument, f"{item!r}: the value is not valid YAML "
                                          f"({' '.join(str(err).split())})") from None
    return out


def parse_setting(text: str):
    """A setting from a YAML file or inline ``key=value,key=value``."""
    from offshelf.settings import Setting

    from offshelf.config import ConfigError, check_setting_values, read_yaml

    path = Path(text)
    if path.suffix in (".yaml", ".yml", ".json"):
        if not path.is_file():
            raise ArgumentError("--setting", f"file {path} does not exist")
        try:
            values = read_yaml(path)  # a syntax error: one line naming file:line
        except ConfigError as err:
            raise ArgumentError("--setting", str(err)) from None
        if not isinstance(values, dict):
            raise ArgumentError("--setting", f"{path}: expected a mapping of setting keys")
    else:
        values = _pairs([p for p in text.split(",") if p.strip()], "--setting")
    try:
        check_setting_values(values)  # the schema's bounds, as a config's bases and rows
        if values.get("softplus_beta") in ("inf", "relu"):
            values = dict(values, softplus_beta=float("inf"))
        return Setting.from_dict(values)
    except (TypeError, ValueError) as err:
        raise ArgumentError("--setting", str(err)) from None


def parse_seeds(text: str) -> list[int]:
    """``START:STOP`` (STOP excluded) or ``N`` (0:N)."""
    try:
        start, sep, stop = text.partition(":")
        seeds = list(range(int(start), int(stop))) if sep else list(range(int(start)))
    except ValueError:
        raise ArgumentError("--seeds", f"{text!r} is not START:STOP or N") from None
    if not seeds:
        raise ArgumentError("--seeds", f"{text!r} holds no seed")
    return seeds


def _same_file(a: Path, b: Path) -> bool:
    """The same file: one inode (hard links, symlinks) or, for paths not yet written, one resolved path."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_writable(argument: str, path: Path) -> None:
    """``path`` can be written as a file: not a folder, and its nearest existing folder takes a new
    file (a read-only filesystem, a missing permission or a file in the way are refused here, before
    any work, not in a traceback after it)."""
    if path.is_dir():
        raise ArgumentError(argument, f"{path} is a folder; give a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ArgumentError(argument, f"{path}: {folder} is not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".offshelf-write-test.")
    except OSError as err:
        raise ArgumentError(argument, f"{path}: cannot write in {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)


def check_outputs(outputs: list[tuple[str, str | os.PathLike]], inputs: list[tuple[str, str | os.PathLike]]) -> None:
    """Refuse, before any work, an output (``(argument, path)``, derived paths included: the grid beside
    a shard, the features beside the metrics) that is one of the ``inputs`` or another output, or that
    cannot be written. The message names the argument whose output it is."""
    seen: list[tuple[str, Path]] = []
    for argument, path in outputs:
        path = Path(path)
        for source, other in inputs:
            if _same_file(path, Path(other)):
                raise ArgumentError(argument, f"{path} is also the input {source} {other}; it would be "
                                              f"overwritten: write the output elsewhere")
        for source, other in seen:
            if _same_file(path, other):
                raise ArgumentError(argument, f"{path} is also the output of {source}; give each output a "
                                              f"path of its own")
        check_writable(argument, path)
        seen.append((argument, path))


class Context:
    """Backend, sampling section and file locations from ``--config`` and the explicit flags."""

    def __init__(self, args):
        from offshelf import backends
        from offshelf.planning.params import canonical

        self.config: dict[str, Any] = {}
        if args.config:
            from offshelf.config import load_config, merge

            self.config = load_config(args.config)
            if args.results:
                self.config = merge(self.config, {"results": args.results})
        name = args.backend or self.config.get("backbone")
        if not name:
            raise ArgumentError("--backend", "name a backend (digits, adm128, edm64, dit256, module:Class) or --config")
        try:
            cls = backends.resolve(name)
        except backends.UnknownBackendError as err:
            raise ArgumentError("--backend", str(err).replace("config key 'backbone' = ", "")) from None
        options = cls.options_from_config(self.config) if self.config else _default_options(cls)
        given = _pairs(args.option, "--option")
        unknown = sorted(set(given) - set(options))
        if unknown:  # never dropped: an option the backend does not read would silently change nothing
            raise ArgumentError("--option", f"unknown option(s) {unknown} of backend {name!r}; its options: "
                                            f"{', '.join(sorted(options)) or 'none'}")
        options.update(given)
        self.backend = backends.create({"name": name, "options": canonical(options)})
        given = _pairs(getattr(args, "sampling", []), "--sampling")
        if isinstance(given.get("respacing"), (int, float)):  # respacing=250: the section string '250'
            given["respacing"] = str(given["respacing"])
        self.sampling = dict(self.config.get("sampling", {}), **given)
        if getattr(args, "sampling", None):
            from offshelf.config import ConfigError, check_respacing, check_section

            try:  # the schema's sampling section and the respacing check the workflow runs
                check_section(self.sampling, ("properties", "sampling"), "sampling", required=False)
                check_respacing({"backbone": name, "sampling": self.sampling})
            except ConfigError as err:
                raise ArgumentError("--sampling", str(err)) from None
        self.explicit = _pairs(args.checkpoint, "--checkpoint", raw=True)  # paths, never numbers
        self.checkpoints = self.config.get("checkpoints", {})
        self.inputs: list[tuple[str, str]] = [("--config", args.config)] if args.config else []
        self.inputs += [(f"--checkpoint {role}", str(path)) for role, path in self.explicit.items()]

    def check_roles(self, *sources: dict) -> None:
        """Every ``--checkpoint ROLE`` is a role this command reads: a typo (``denoisre``) or a role
        the command has no use for is refused, naming the roles it reads."""
        roles = sorted({role for files in sources for role in files})
        unknown = sorted(set(self.explicit) - set(roles))
        if unknown:
            raise ArgumentError("--checkpoint", f"unknown role(s) {unknown}: backend {self.backend.name!r} reads "
                                                f"{', '.join(roles)} here")

    def files(self, sources: dict) -> dict[str, str]:
        """Role -> path: ``--checkpoint ROLE=PATH``, else where the workflow keeps it."""
        from offshelf.backends.base import Trained
        from offshelf.planning.params import pretrained_path

        files = {}
        for role, source in sources.items():
            if role in self.explicit:
                files[role] = str(self.explicit[role])
            elif not self.config:
                raise ArgumentError("--checkpoint", f"role {role!r} needs a file: --checkpoint {role}=PATH "
                                                    f"(or --config to use the workflow's)")
            elif isinstance(source, Trained):
                files[role] = f"{self.config['results']}/{self.config['experiment']}/models/{source.role}.pt"
            else:
                files[role] = pretrained_path(self.config, source.name)
            if not Path(files[role]).is_file():
                raise ArgumentError("--checkpoint", f"{role}: {files[role]} does not exist "
                                                    f"(run the workflow's models first, or give --checkpoint {role}=PATH)")
            if role not in self.explicit:  # the workflow's file of this role (from --config)
                self.inputs.append((f"--config's {role}", files[role]))
        return files

    def batch_size(self, args) -> int | str:
        """``--batch-size``, else the config's ``sampling.batch_size``: a positive int or ``auto``
        (offshelf.levers.auto_batch_size, resolved by the stage that samples)."""
        if args.batch_size is not None and args.batch_size != "auto" and (
                not str(args.batch_size).isdigit() or int(args.batch_size) < 1):
            raise ArgumentError("--batch-size", f"{args.batch_size}: must be >= 1 (or auto)")
        size = args.batch_size if args.batch_size is not None else self.sampling.get("batch_size")
        if size == "auto":
            return size
        if not size or int(size) < 1:
            raise ArgumentError("--batch-size", "give a positive batch size or auto (or a config with sampling.batch_size)")
        return int(size)


def _default_options(cls) -> dict[str, Any]:
    """A backend's options when no config is given: those its ``options_from_config`` reads from an
    empty config (their names are what ``--option`` may set)."""
    try:
        return dict(cls.options_from_config({}))
    except Exception:  # a plug-in that needs its config section: no option is known without it
        return {}


def cmd_sample(args) -> int:
    from offshelf import stages
    from offshelf.images import save_grid
    from offshelf.levers import Levers
    from offshelf.shards import save_shard

    from offshelf.backends.capabilities import unavailable

    ctx = Context(args)
    setting, seeds = parse_setting(args.setting), parse_seeds(args.seeds)
    reason = unavailable(ctx.backend, setting)
    if reason:
        raise ArgumentError("--setting", f"backend {ctx.backend.name!r} cannot run {setting.name}: {reason}")
    classes = wanted = None
    if args.classes:
        try:
            wanted = [int(c) for c in args.classes.split(",")]
        except ValueError:
            raise ArgumentError("--classes", f"{args.classes!r}: give class indices, e.g. 3,7") from None
        reason = unavailable(ctx.backend, setting, chosen_classes=True)
        if reason:
            raise ArgumentError("--classes", reason)
        num_classes = getattr(ctx.backend, "num_classes", None)
        bad = [c for c in wanted if c < 0 or (num_classes and c >= num_classes)]
        if bad:
            raise ArgumentError("--classes", f"{bad} not a class of backend {ctx.backend.name!r}"
                                             + (f" (0..{num_classes - 1})" if num_classes else ""))
        classes = [wanted[i % len(wanted)] for i in range(len(seeds))]  # seed i of --seeds: class i mod len
    sources = ctx.backend.files(setting)
    ctx.check_roles(sources)
    files = ctx.files(sources)
    batch_size = ctx.batch_size(args)
    grid = Path(args.grid) if args.grid else Path(args.out).with_suffix(".png")
    setting_file = [("--setting", args.setting)] if Path(args.setting).suffix in (".yaml", ".yml", ".json") else []
    check_outputs([("--out", args.out), ("--grid" if args.grid else "--out (its grid beside it)", grid)],
                  ctx.inputs + setting_file)
    models = stages.load_models(ctx.backend, files, ctx.sampling, setting, ctx.checkpoints)
    facts = {"levers": Levers.from_sampling(ctx.sampling).description()}
    images, labels, seconds = stages.sample_shard(ctx.backend, models, setting, seeds, batch_size, progress=True,
                                                  labels=classes, facts=facts)
    save_shard(args.out, images, labels, seeds, seconds, facts, classes=wanted)  # evaluate checks labels against them
    save_grid(images, grid, scale=max(1, 64 // images.shape[1]))
    print(f"{setting.name}: {len(images)} samples (seeds {seeds[0]}..{seeds[-1]}) in {seconds:.1f} s -> "
          f"{args.out}, {grid}")
    return 0


def cmd_calibrate(args) -> int:
    """Per-step ECE of each ``--probe`` (classifier variant); prints each one's integral
    calibration error (ICE, Eq. 1: the mean per-step ECE) and where the table went."""
    import pandas as pd

    from offshelf import stages
    from offshelf.atomic import save_csv
    from offshelf.calibration import integral_calibration_error
    from offshelf.settings import probe_setting

    ctx = Context(args)
    probes = []
    for name in args.probe:
        try:
            probes.append(probe_setting(name))
        except (ValueError, IndexError):
            raise ArgumentError("--probe", f"{name!r} is not a probe name such as offshelf-x0_sp3, "
                                           f"finetuned-xt_relu or combined-x0_relu_sw10") from None
    sources = {name: ctx.backend.files(probe) for name, probe in zip(args.probe, probes)}
    ctx.check_roles(*sources.values())  # a role any probe reads is known: checked once, over all of them
    files_of = {name: ctx.files(files) for name, files in sources.items()}
    calibration = dict(ctx.config.get("calibration", {}), **({"num_samples": args.num_samples}
                                                            if args.num_samples is not None else {}))
    if "num_samples" not in calibration:
        raise ArgumentError("--num-samples", "give the number of trajectories (or a config with calibration)")
    from offshelf.config import check_section

    try:  # the schema's calibration section, as the workflow checks it
        check_section(calibration, ("properties", "calibration"), "calibration")
    except ValueError as err:
        raise ArgumentError("--num-samples" if args.num_samples is not None else "--config", str(err)) from None
    batch_size = ctx.batch_size(args)
    check_outputs([("--out", args.out)], ctx.inputs)
    tables = {}
    for name, probe in zip(args.probe, probes):
        models = stages.load_models(ctx.backend, files_of[name], ctx.sampling, probe, ctx.checkpoints)
        tables[name] = stages.calibration_profile(ctx.backend, models, probe, calibration, batch_size)
    # one probe: the workflow's per-step table as it is; several: one table, a `probe` column first
    table = (next(iter(tables.values())) if len(tables) == 1 else
             pd.concat([t.assign(probe=name)[["probe", *t.columns]] for name, t in tables.items()], ignore_index=True))
    save_csv(args.out, table)
    width = max(map(len, tables))
    print(f"integral calibration error (ICE: mean per-step ECE, lower is better), "
          f"{calibration['num_samples']} trajectories per variant:")
    for name, t in tables.items():
        print(f"  {name:<{width}}  ICE {integral_calibration_error(t):.4f} over {len(t)} steps")
    print(f"per-step table ({', '.join(map(str, table.columns))}) -> {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from offshelf import stages
    from offshelf.backends.capabilities import Capability
    from offshelf.atomic import save_json

    ctx = Context(args)
    for shard in args.shards:
        if not Path(shard).is_file():
            raise ArgumentError("--shards", f"{shard} does not exist")
    if args.num_samples is not None and args.num_samples < 2:
        raise ArgumentError("--num-samples", f"{args.num_samples}: must be >= 2 (a covariance needs two samples)")
    sources = ctx.backend.evaluation_files()
    ctx.check_roles(sources)
    files = ctx.files(sources)
    reference = args.reference
    computed = reference is None and Capability.REFERENCE_FEATURES in ctx.backend.capabilities
    features = Path(args.out).with_suffix(".features.npz")
    outputs = [("--out", args.out), ("--out (its features file beside it)", features)]
    if computed:
        outputs.append(("--out (its reference features beside it)", Path(args.out).with_suffix(".reference.npz")))
    check_outputs(outputs, ctx.inputs + [("--shards", shard) for shard in args.shards]
                  + ([("--reference", reference)] if reference is not None else []))
    files = stages.verified_files(files, sources, ctx.checkpoints)
    with tempfile.TemporaryDirectory(prefix="offshelf-evaluate-") as scratch:
        made = None  # the reference features made here: kept beside --out only once the shards passed
        if computed:
            from offshelf.atomic import save_npz

            reference = made = str(Path(scratch) / "reference.npz")
            save_npz(reference, **stages.reference_features(ctx.backend, files, ctx.config.get("evaluation", {})))
        # per-sample features and bootstrap replicates beside the metrics, as the workflow's evaluate
        # job writes them (what a report pairs against a baseline row; docs/statistics.md); the
        # shards are checked before anything is written beside --out
        result = stages.evaluate(ctx.backend, stages.load_judge(ctx.backend, files, reference), args.shards,
                                 ctx.config.get("evaluation", {}), args.num_samples, features_path=features,
                                 chosen_classes=True)  # offshelf sample --classes shards: labels as recorded
        if made is not None:
            shutil.move(made, Path(args.out).with_suffix(".reference.npz"))
    save_json(args.out, result)
    print(json.dumps(result, indent=2, sort_keys=True, default=float))
    return 0


def _numbers(text: str | None, argument: str) -> tuple[float, ...] | None:
    """``3,5,inf`` -> (3.0, 5.0, inf); None stays None (the config's or the default grid)."""
    if text is None:
        return None
    try:
        return tuple(float("inf") if v.strip() in ("inf", "relu") else float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ArgumentError(argument, f"{text!r} is not a comma-separated list of numbers") from None


def cmd_tune(args) -> int:
    """Stage 1 (calibration grid over β × τ2 on held-out images) and Stage 2 (scale search)."""
    from offshelf import stages
    from offshelf.settings import Setting
    from offshelf.backends.capabilities import Capability, require, unavailable
    from offshelf.tuning import TuneSpec, run_tfg_beam, run_tune

    if args.beam and args.method != "tfg-beam":
        raise ArgumentError("--beam", "only --method tfg-beam takes beam keys")
    ctx = Context(args)
    require(ctx.backend, Capability.TUNING, "offshelf tune")  # before any file is read
    search = _pairs(args.search, "--search")
    spec = TuneSpec.from_config(ctx.config.get("tune"), classifier=args.classifier, network=args.network,
                                regime=args.regime,
                                criterion=args.criterion, num_images=args.num_images, sine_factor=args.sine_factor,
                                beta_choice=args.beta_choice, guided_scale=args.guided_scale,
                                guided_samples=args.guided_samples,
                                softplus_betas=_numbers(args.softplus_betas, "--softplus-betas"),
                                marginal_temperatures=_numbers(args.marginal_temperatures, "--marginal-temperatures"),
                                search=dict(ctx.config.get("tune", {}).get("search", {}), **search) or None)
    setting = Setting(regime=spec.regime, classifier=spec.classifier, input=spec.input, network=spec.network)
    reason = unavailable(ctx.backend, setting)
    if reason:
        raise ArgumentError("--classifier", f"backend {ctx.backend.name!r} cannot guide with {spec.classifier!r}: {reason}")
    sources = ctx.backend.evaluation_files()
    ctx.check_roles(ctx.backend.files(setting), sources)
    guiding = ctx.files(ctx.backend.files(setting))
    models = stages.load_models(ctx.backend, guiding, ctx.sampling, setting, ctx.checkpoints)
    judging = stages.verified_files(ctx.files(sources), sources, ctx.checkpoints)
    if args.method == "tfg-beam":
        summary = run_tfg_beam(ctx.backend, models, spec, args.out, guiding, judging, ctx.config.get("evaluation", {}),
                               ctx.sampling, ctx.batch_size(args), progress=False,
                               beam=_pairs(args.beam, "--beam"))
        dropped = "".join(f"; {k} not searched: {why}" for k, why in summary["dropped_knobs"].items())
        print(f"{summary['base']}: {', '.join(f'{k}={v:g}' for k, v in summary['knobs'].items())} (TFG's beam search, "
              f"{sum(summary['candidates_per_round'])} candidates in {summary['rounds']} rounds{dropped}; FID "
              f"{summary['search_fid']:.4g} by {summary['judge']}); {summary['denoiser_evaluations']:,} denoiser "
              f"evaluations -> {Path(args.out) / 'tuned.yaml'}")
        return 0
    summary = run_tune(ctx.backend, models, spec, args.out, guiding, judging, ctx.config.get("evaluation", {}),
                       ctx.sampling, ctx.batch_size(args), progress=False)
    print(f"{summary['base']}: softplus_beta={summary['chosen']['softplus_beta']:g} "
          f"marginal_temperature={summary['chosen']['marginal_temperature']:g} (β by {summary['beta_choice']} "
          f"calibration, τ2 by integral {spec.criterion}), "
          f"sine_factor={summary['sine_factor']:g}, scale={summary['scale']:g} (FID {summary['search_fid']:.4g} by "
          f"{summary['judge']}); {summary['stage1_denoiser_evaluations']:,} + "
          f"{summary['stage1_guided_denoiser_evaluations']:,} (β along guided trajectories) + "
          f"{summary['stage2_denoiser_evaluations']:,} denoiser evaluations -> {Path(args.out) / 'tuned.yaml'}")
    return 0


def cmd_plan(args) -> int:
    """The sampling work of a workflow config, per table and in total; GPU-hours given per-evaluation
    costs (a --costs file, or the two seconds by hand: both through planning.costs.evaluation_costs)."""
    from offshelf.config import read_config, validated_plan
    from offshelf.planning.costs import cost_plan, describe_job_counts, evaluation_costs

    config = read_config(args.config)
    plan = validated_plan(config)  # validates the config; built once: the job counts and the costs read it
    costs = evaluation_costs(config["backbone"], args.costs, args.seconds_per_denoiser, args.seconds_per_classifier)
    rows = cost_plan(config, plan, costs)
    print(describe_job_counts(config, plan))
    head = ["table", "settings", "samples", "denoiser evaluations", "classifier forwards"]
    head += ["GPU-hours"] if costs else []
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        cells = [r["table"], r["settings"], r["samples"], f"{r['denoiser']:,}", f"{r['classifier']:,}"]
        cells += [f"{r['hours']:,.2f}"] if costs else []
        print("| " + " | ".join(map(str, cells)) + " |")
    # Best-of-N and SMC score with a classifier forward alone: say where backwards are fewer than forwards
    fewer = [f"{r['table']} {r['classifier_backward']:,}" for r in rows
             if r.get("classifier_backward", r["classifier"]) != r["classifier"]]
    if fewer:
        print(f"classifier backwards, where fewer than forwards (Best-of-N, SMC): {'; '.join(fewer)}")
    if costs:
        print(f"GPU-hours = (denoiser evaluations × {costs.denoiser:g} s + classifier forwards × "
              f"{costs.classifier:g} s) / 3600, seconds per image per evaluation (a CFG pair counts as two "
              f"denoiser evaluations; a classifier forward is costed as a whole gradient); the total counts "
              f"settings shared by tables once; evaluation not counted")
        print(f"costs: {costs.source}; this config samples at sampling.batch_size = "
              f"{config['sampling'].get('batch_size')}")
    else:
        print("No GPU costs given: pass --costs FILE (benchmarks/gpu_throughput.py on your GPU writes one), or "
              "--seconds-per-denoiser and --seconds-per-classifier (per image, measured by hand), for GPU-hours.")
    return 0


def cmd_checkpoints(args) -> int:
    """list | fetch NAME... | verify NAME PATH: the checkpoint registry and cache (offshelf.checkpoints)."""
    import logging

    from offshelf.checkpoints import (DEFAULT_LOCK, REGISTRY, TORCHVISION_PREFIX, CheckpointError,
                                      default_cache_dir, fetch, load_registry_overrides, verify_against_pins)

    parser = argparse.ArgumentParser(prog=f"{PROG} checkpoints", description="the checkpoint registry and cache")
    commands = parser.add_subparsers(dest="command", required=True)
    fetch_parser = commands.add_parser("fetch", help="download (if needed) and verify checkpoints (a full re-hash)")
    fetch_parser.add_argument("names", nargs="+", metavar="NAME")
    list_parser = commands.add_parser("list", help="list the registry and what is cached")
    verify_parser = commands.add_parser("verify", help="verify a file on disk against a registry entry (a full hash)")
    verify_parser.add_argument("name", metavar="NAME")
    verify_parser.add_argument("path", type=Path, metavar="PATH")
    for sub in (fetch_parser, list_parser, verify_parser):
        sub.add_argument("--cache", type=Path, default=None, help="cache folder (default $OFFSHELF_CACHE or ~/.cache/offshelf)")
        sub.add_argument("--registry", type=Path, default=None, help="YAML/JSON file overriding registry entries")
    for sub in (fetch_parser, verify_parser):
        sub.add_argument("--lock", type=Path, default=Path(DEFAULT_LOCK),
                         help=f"lock file pinning sha256 and size (default {DEFAULT_LOCK}, the workflow's)")
    fetch_parser.add_argument("--offline", action="store_true", help="never download; fail if not cached")
    args = parser.parse_args(args.rest)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cache = args.cache if args.cache is not None else default_cache_dir()
    try:
        if args.command == "list":
            overrides = load_registry_overrides(args.registry) if args.registry is not None else {}
            for checkpoint in sorted({**REGISTRY, **overrides}.values(), key=lambda c: c.name):
                cached = "cached" if (cache / checkpoint.filename).is_file() else "-"
                print(f"{checkpoint.name:34s} {cached:6s} {checkpoint.license:40s} {checkpoint.url}")
            print(f"{TORCHVISION_PREFIX}<model>: any torchvision classification model by name (its DEFAULT "
                  f"weights, verified by the hash prefix of its file name), e.g. {TORCHVISION_PREFIX}convnext_tiny")
            return 0
        if args.command == "verify":
            digest, compared = verify_against_pins(args.path, args.name, args.lock, cache, args.registry)
            print(f"{args.path}: sha256 {digest} matches {', '.join(compared)}")
            return 0
        for name in args.names:
            print(fetch(name, cache_dir=cache, lock_file=args.lock, offline=args.offline, registry_file=args.registry))
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_check_config(args) -> int:
    """Validate each config file on its own, read as the workflow reads it (``base:`` resolved,
    nothing else merged in). A text-to-image config (``offshelf text2image --config``: top-level
    ``prompts``) is checked by that command's own loader."""
    from offshelf.config import ConfigError, check_config_file

    from offshelf.backends import BACKENDS
    from offshelf.config import read_config

    failed = 0
    for path in args.files:
        try:
            kind = check_config_file(path)
        except ConfigError as err:
            print(f"offshelf: {err}", file=sys.stderr)
            failed += 1
            continue
        if kind != "workflow":
            print(f"offshelf: {path}: valid ({kind} config)")
            continue
        backbone = read_config(path)["backbone"]
        imported = (f"built-in backbone {backbone!r}" if backbone in BACKENDS else
                    f"plug-in backbone {backbone!r}: imported module {backbone.partition(':')[0]!r}, whose code ran")
        print(f"offshelf: {path}: valid ({imported})")
    return 1 if failed else 0


def cmd_resume(args) -> int:
    """Run Snakemake with ``args.rest``; after a killed run, unlock first if none runs here."""
    from offshelf.jobs import resume

    if args.rest[:1] in (["-h"], ["--help"]):
        print(f"usage: {PROG} resume [SNAKEMAKE ARGS...]\n  run Snakemake; after a killed run, unlock first if no "
              f"Snakemake runs in the same directory")
        return 0
    return resume(args.rest)


def cmd_text2image(args) -> int:
    """CLIP-guided text-to-image comparison (offshelf.text2image, docs/clip.md)."""
    from offshelf.text2image import load_config, run_config

    written = run_config(load_config(args.config), outdir=args.outdir, device=args.device,
                         n_per_prompt=args.n_per_prompt)
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="a workflow config: backend, its options, sampling, file locations")
    parser.add_argument("--results", help="override the config's results folder (where trained models are)")
    parser.add_argument("--backend", help="digits, adm128, edm64, dit256 or module:Class (default: the config's)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="a backend option (overrides the config's)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="ROLE=PATH",
                        help="the file of a role (denoiser, offshelf, evaluator...)")
    parser.add_argument("--batch-size", help="a positive int or auto (the largest that fits in free device memory); "
                                            "default: the config's sampling.batch_size")


def cmd_held_out(args) -> int:
    """ImageNet validation images, preprocessed as the backbones' training data, for offshelf tune."""
    from offshelf.held_out import images_from_folder, save_held_out

    if args.resolution < 1 or args.count < 1:
        raise ArgumentError("--resolution" if args.resolution < 1 else "--count", "must be >= 1")
    images, labels = images_from_folder(args.folder, args.resolution, args.count)
    save_held_out(args.out, images, labels)
    print(f"{len(images)} images of {len(set(labels.tolist()))} classes at {args.resolution}x{args.resolution} -> "
          f"{args.out} (config: imagenet.held_out: {args.out})")
    return 0


def _add_sample(commands) -> None:
    """offshelf sample."""
    sample = commands.add_parser("sample", help="sample one shard (.npz in ADM's layout, plus a PNG grid)")
    _common(sample)
    sample.add_argument("--setting", required=True, help="a YAML file or inline key=value,... (offshelf.settings.Setting)")
    sample.add_argument("--seeds", required=True, help="START:STOP (stop excluded) or N (= 0:N); one seed per sample")
    sample.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE",
                        help="sampling keys (respacing, variance) overriding the config's")
    sample.add_argument("--out", required=True, help="the shard .npz")
    sample.add_argument("--grid", help="the PNG grid (default: beside the shard)")
    sample.add_argument("--classes", help="C,... the classes to sample, cycled over the seeds (seed i of --seeds: "
                                          "class i mod count); default: the class each seed draws, as the workflow")
    sample.set_defaults(run=cmd_sample)


def _add_calibrate(commands) -> None:
    """offshelf calibrate."""
    calibrate = commands.add_parser("calibrate", help="per-step ECE of a classifier variant along the reverse process")
    _common(calibrate)
    calibrate.add_argument("--probe", required=True, action="append",
                           help="classifier variant, e.g. offshelf-x0_sp3 (repeat to compare variants)")
    calibrate.add_argument("--num-samples", type=int, help="trajectories (default: the config's calibration.num_samples)")
    calibrate.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE")
    calibrate.add_argument("--out", required=True, help="the per-step table (.csv)")
    calibrate.set_defaults(run=cmd_calibrate)


def _add_evaluate(commands) -> None:
    """offshelf evaluate."""
    evaluate = commands.add_parser("evaluate", help="FID / precision / recall (/ accuracy) of shards")
    _common(evaluate)
    evaluate.add_argument("--shards", nargs="+", required=True, help="shard .npz files, in seed order")
    evaluate.add_argument("--reference", help="reference features .npz (default: computed beside --out)")
    evaluate.add_argument("--num-samples", type=int, help="evaluate the first N samples")
    evaluate.add_argument("--out", required=True, help="the metrics .json (features and bootstrap replicates go "
                          "beside it, <out stem>.features.npz)")
    evaluate.set_defaults(run=cmd_evaluate)


def _add_tune(commands) -> None:
    """offshelf tune."""
    tune = commands.add_parser("tune", help="calibrate a classifier (τ2 on held-out images, β along the "
                               "trajectories it guides), then search the scale",
                               description="Stage 1: noise held-out real images to every step, denoise to x̂0, and "
                               "choose the marginal temperature τ2 of every Softplus β by integral NLL or ECE over a "
                               "grid; choose β by calibration along the trajectories each β guides, judged by the "
                               "evaluation network (--beta-choice unguided: by the held-out criterion too). "
                               "Stage 2: choose the guidance scale by a multi-fidelity FID search judged by the "
                               "backend's evaluation network. Writes a bases: entry (tuned.yaml) and the evidence "
                               "(docs/tuning.md). Options left out come from the config's `tune` section.")
    _common(tune)
    tune.add_argument("--classifier", help="the off-the-shelf classifier to tune (default: offshelf)")
    tune.add_argument("--network", help="the classifier family (digits: mlp, vit, wide...; default: the backend's)")
    tune.add_argument("--regime", choices=["cond", "uncond"], help="cond or uncond (default: uncond)")
    tune.add_argument("--criterion", choices=["nll", "ece"], help="Stage 1's integral criterion (default: nll)")
    tune.add_argument("--num-images", type=int, help="held-out real images (default 300)")
    tune.add_argument("--beta-choice", choices=["guided", "unguided"],
                      help="β by calibration along its own guided trajectories, judged by the evaluation network "
                           "(guided, default), or by Stage 1's held-out criterion (unguided)")
    tune.add_argument("--guided-scale", type=float, help="scale of the trajectories that choose β (default 3)")
    tune.add_argument("--guided-samples", type=int, help="guided trajectories per β (default 200)")
    tune.add_argument("--softplus-betas", metavar="B,B,...", help="Softplus β grid, inf = ReLU")
    tune.add_argument("--marginal-temperatures", metavar="T,T,...", help="τ2 grid (τ1 = 1)")
    tune.add_argument("--sine-factor", type=float, help="γ of Eq. 5 where calibration supports the bump, else 0 (default 0.3)")
    tune.add_argument("--search", action="append", default=[], metavar="KEY=VALUE",
                      help="scale search keys: initial=[1,3,10] low_fidelity=100 full_fidelity=500 factor=3 ...")
    tune.add_argument("--method", choices=["calibrated", "tfg-beam"], default="calibrated",
                      help="calibrated: the two stages above (default); tfg-beam: TFG's hyper-parameter beam search "
                           "over the scale and the Softplus width, judged the same way (docs/tuning.md §8)")
    tune.add_argument("--beam", action="append", default=[], metavar="KEY=VALUE",
                      help="tfg-beam keys: top_k=2 rounds=6 samples_per_candidate=64 finalists=1 full_samples=500")
    tune.add_argument("--sampling", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--out", required=True, help="output folder: tuned.yaml and the evidence files")
    tune.set_defaults(run=cmd_tune)


def _add_held_out(commands) -> None:
    """offshelf held-out."""
    held_out = commands.add_parser("held-out", help="labelled ImageNet validation images for offshelf tune (.npz)",
                                   description="Read an ImageFolder tree (one folder per class: ImageNet's 1000 synset "
                                   "folders; the class index is the sorted position), take --count images round-robin "
                                   "over the classes, center-crop them as guided-diffusion's training data "
                                   "(center_crop_arr) and write arr_0/arr_1; point imagenet.held_out at the file.")
    held_out.add_argument("--folder", required=True, help="the ImageNet validation folder, one subfolder per class")
    held_out.add_argument("--resolution", type=int, required=True, help="the backbone's (adm128: 128)")
    held_out.add_argument("--count", type=int, default=1000, help="images (default 1000: one per class)")
    held_out.add_argument("--out", required=True, help="the .npz to write")
    held_out.set_defaults(run=cmd_held_out)


def _add_plan(commands) -> None:
    """offshelf plan."""
    plan = commands.add_parser("plan", help="sampling work (network evaluations; GPU-hours given costs) per table")
    plan.add_argument("--config", required=True, help="a workflow config")
    plan.add_argument("--costs", help="a costs file (benchmarks/gpu_throughput.json): seconds per image per "
                                      "evaluation for the config's backbone, for GPU-hours")
    plan.add_argument("--seconds-per-denoiser", type=float,
                      help="shorthand for a hand measurement: one denoiser evaluation, per image (s)")
    plan.add_argument("--seconds-per-classifier", type=float,
                      help="shorthand for a hand measurement: one classifier forward+backward, per image (s)")
    plan.set_defaults(run=cmd_plan)


def _add_maintenance(commands) -> None:
    """offshelf checkpoints, resume and check-config."""
    for name, run, help_text in (("checkpoints", cmd_checkpoints, "list | fetch NAME... | verify NAME PATH"),
                                 ("resume", cmd_resume, "rerun Snakemake after a kill (unlocks stale locks only)")):
        sub = commands.add_parser(name, help=help_text, add_help=False)
        sub.add_argument("rest", nargs=argparse.REMAINDER)
        sub.set_defaults(run=run)
    from offshelf.integrations.generate import add_parser as add_generate  # no diffusers import until it runs

    add_generate(commands)
    check = commands.add_parser("check-config", help="validate each workflow config file as the workflow would "
                                "(imports the backbone's module: a 'module:Class' plug-in's code runs)",
                                description="Validate each workflow config file on its own, as the workflow would "
                                "(a file names its base with `base:`). This imports the backbone's module: for a "
                                "plug-in backbone 'module:Class' its module-level code runs, as it does in plan and "
                                "snakemake (docs/backends.md, 'Trust').")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(run=cmd_check_config)


def _add_text2image(commands) -> None:
    """offshelf text2image."""
    t2i = commands.add_parser("text2image", help="CLIP-guided text-to-image: linear, sine, recurrent (docs/clip.md)")
    t2i.add_argument("--config", required=True, help="YAML config, e.g. config/clip_text2image.yaml")
    t2i.add_argument("--outdir", help="override the config's outdir")
    t2i.add_argument("--device", help="override the config's device (cuda, cpu)")
    t2i.add_argument("--n-per-prompt", type=int, help="override the config's n_per_prompt")
    t2i.set_defaults(run=cmd_text2image)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0],
                                     epilog="Run `offshelf COMMAND --help` for each command's options.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_sample(commands)
    _add_calibrate(commands)
    _add_evaluate(commands)
    _add_tune(commands)
    _add_held_out(commands)
    _add_plan(commands)
    _add_maintenance(commands)
    _add_text2image(commands)
    return parser


PASSTHROUGH = {"checkpoints": cmd_checkpoints, "resume": cmd_resume}  # their own parsers take every argument


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in PASSTHROUGH:
        return int(PASSTHROUGH[argv[0]](argparse.Namespace(rest=argv[1:])) or 0)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except Exception as err:  # one line naming the argument or the file, never a traceback into torch
        from offshelf.backends.capabilities import UnsupportedError
        from offshelf.checkpoints import CheckpointError
        from offshelf.config import ConfigError
        from offshelf.guidance import NonFiniteError

        if isinstance(err, (ArgumentError, ConfigError, CheckpointError, UnsupportedError, NonFiniteError,
                            FileNotFoundError, ValueError)):
            print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())

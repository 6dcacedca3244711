"""Workflow config validation: the JSON schema (structure, types, allowed values) plus the checks
a schema cannot express. Every error is one line that names the key path (or the file and line)
and what is allowed, raised before any job starts.

Order of the checks, each refusing before the next runs:

1. ``backbone``: a built-in name or an importable ``module:Class`` (every other error depends
   on which backend it is, so it comes first);
2. non-finite numbers (``.nan``, ``.inf``) anywhere, by key path;
3. the schema (``offshelf/schemas/config.schema.yaml``, shipped inside the package; the workflow
   reaches the same file through ``workflow/schemas/config.schema.yaml``, a symlink), then what it cannot say:
   ``evaluation.bootstrap`` 0 or at least 41, row labels unique within a table;
4. the plan (:func:`offshelf.planning.plan.build_plan`, built once: :func:`validated_plan`
   returns it): the number of jobs (bounded by ``max_jobs``, a runaway shard count refused by
   arithmetic before any row is built), then table rows that build valid settings;
5. ``sampling.respacing`` against the backbone's schedule, labels, the capabilities the config asks of
   its backend (declared, never found out by calling), and the judge against the
   plan's guiding classifiers;
6. output paths: ``<results>/<experiment>`` and ``<results>/logs/<experiment>`` provably inside
   ``results``, no link below them leading outside it (every output folder: figures, report,
   samples, metrics...), and no regular file where a folder must go; ``results_doc``, the one
   output outside it, a page that exists with its markers (:mod:`offshelf.results_doc`).

A config is read one way, :func:`read_config` (the Snakefile, ``offshelf plan``, ``check-config``
and every ``--config`` option): one file, complete or naming its base (``base: FILE``, relative
to it); nothing is merged in implicitly. ``offshelf check-config FILE...`` runs all of it on each
file on its own. Snakemake's own loader reports
a YAML syntax error in ``--configfile`` as "Config file is not valid JSON or YAML" without the
file or the line; this command names both.
"""

from __future__ import annotations

import math
import os
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from offshelf.extras import needs

needs(__name__, "yaml", "jsonschema")  # offshelf[workflow]
import yaml

from offshelf.yaml_file import YAMLSyntaxError, read_yaml_file

SCHEMA_RESOURCE = "schemas/config.schema.yaml"  # inside the offshelf package (package data)


class ConfigError(ValueError):
    pass


# Keys a schema rule forbids for a reason other than the backbone (the schema's `false` entries
# carry no message of their own).
FORBIDDEN_BY_KEY = {
    "imagenet.fid_mode": "it is clean-fid's mode, used only by imagenet.fid_protocol 'adm_tf' "
                         "(the pytorch_fid protocol has no modes)",
}


def schema_text(schema_path: str | Path | None = None) -> str:
    """The schema: from ``schema_path`` (the workflow passes its own copy's path) or else from the
    installed package, which works for editable and non-editable installs alike."""
    if schema_path is not None:
        return Path(schema_path).read_text()
    return resources.files("offshelf").joinpath(SCHEMA_RESOURCE).read_text()


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a syntax error is one line naming ``file:line:column``."""
    try:
        return read_yaml_file(path)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from err
    except YAMLSyntaxError as err:
        raise ConfigError(str(err)) from err


# ---------------------------------------------------------------------------------- the checks


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "<top level>"


def check_backbone(config: dict[str, Any]) -> None:
    """``backbone`` is a built-in name (accepted without importing anything) or an import path
    resolved by :func:`offshelf.backends.resolve`, whose one-line error is passed on."""
    from offshelf.backends import BACKENDS, UnknownBackendError, resolve

    if "backbone" not in config:
        raise ConfigError(f"config key 'backbone' is missing: expected one of {', '.join(BACKENDS)} "
                          f"or an import path 'package.module:Class'")
    name = config["backbone"]
    if isinstance(name, str) and name in BACKENDS:
        return
    if isinstance(name, str) and ":" not in name:  # a typo of a built-in name, not an import path
        raise ConfigError(f"config key 'backbone' = {name!r}: expected one of {', '.join(BACKENDS)} "
                          f"or an import path 'package.module:Class'")
    try:
        resolve(name)
    except UnknownBackendError as err:
        raise ConfigError(str(err)) from err


def check_config_values_finite(value: Any, path: tuple = (), seen: set[int] | None = None) -> None:
    """Refuse NaN and ±inf anywhere in the config, naming the key path. A non-finite number is
    never a meaningful setting: a NaN or infinite scale samples black images that still score a
    finite FID. ReLU is ``softplus_beta: inf`` written as a string ('inf' or 'relu'). A mapping or
    list reached twice (a YAML alias: one object) is walked once, so the walk is linear in the
    file however its aliases multiply."""
    seen = set() if seen is None else seen
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, dict):
        for k, v in value.items():
            check_config_values_finite(v, (*path, k), seen)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_config_values_finite(v, (*path, i), seen)
    elif isinstance(value, float) and not math.isfinite(value):
        hint = ("; for ReLU write the string 'inf' or 'relu' (quoted)"
                if path and path[-1] == "softplus_beta" and value > 0 else "; expected a finite number")
        raise ConfigError(f"config key '{_key(path)}' = {value}: not a finite number{hint}")


def _properties(schema: Any, root: dict) -> set[str]:
    """Property names a schema object allows, following ``$ref`` and ``allOf`` (what
    ``unevaluatedProperties`` sees)."""
    if not isinstance(schema, dict):
        return set()
    names = set(schema.get("properties", {}))
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target[part]
        names |= _properties(target, root)
    for sub in schema.get("allOf", []):
        names |= _properties(sub, root)
    return names


def _explain(error, root_schema: dict, config: dict) -> str:
    where = _key(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        allowed = _properties(error.schema, root_schema)
        extra = sorted(set(error.instance) - allowed)
        return f"config key '{where}': unknown key(s) {extra}; allowed keys: {', '.join(sorted(allowed))}"
    if error.schema is False:  # a section that a backbone-specific rule forbids
        # jsonschema (4.26) leaves the key out of a false schema's path: it is the key present in
        # the config object there whose entry under the schema's `properties` is `false`
        path, node, container = list(error.absolute_path), root_schema, config
        for part in error.schema_path:
            node = node[part]
        for part in path:
            container = container[part]
        if isinstance(node, dict) and isinstance(container, dict):
            keys = [k for k, v in node.items() if v is False and k in container]
            if keys:
                where = _key([*path, keys[0]])
        if where in FORBIDDEN_BY_KEY:
            return f"config key '{where}' is not allowed here: {FORBIDDEN_BY_KEY[where]}"
        return (f"config key '{where}' is not allowed with backbone {config.get('backbone')!r} "
                f"(it belongs to another backbone; see workflow/schemas/config.schema.yaml)")
    if error.validator == "enum":
        return f"config key '{where}' = {error.instance!r}; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"config key '{where}': {error.message}"
    if error.validator in ("oneOf", "anyOf"):
        return (f"config key '{where}' = {error.instance!r} is invalid: expected a positive number up to 1e6 "
                f"or 'inf'")
    if error.validator == "minLength" and error.instance == "":
        return f"config key '{where}' = '': must not be empty"
    if error.validator == "maxLength":
        return (f"config key '{where}' = {str(error.instance)[:20]!r}... ({len(error.instance)} characters): at most "
                f"{error.validator_value} characters")
    if error.validator == "pattern" and where == "experiment":
        return (f"config key 'experiment' = {error.instance!r}: expected a plain folder name (letters, digits, "
                f"'_', '.', '-'; no '/', not starting with '.' or '-')")
    return f"config key '{where}' = {error.instance!r}: {error.message}"


def check_section(values: Any, pointer: tuple[str, ...], label: str, required: bool = True) -> None:
    """``values`` against one part of the schema (``pointer``: its path, e.g. ``("$defs", "base")``;
    the ``$defs`` it refers to come along): how the command line checks the setting, sampling and
    calibration it builds, with the workflow's own definitions. Errors name ``<label> key '...'``.
    ``required=False``: the part's required keys may be absent (a command line gives a few)."""
    import jsonschema

    check_config_values_finite(values, (label,))
    root = yaml.safe_load(schema_text())
    part: Any = root
    for name in pointer:
        part = part[name]
    part = dict(part, **{"$defs": root["$defs"]})
    if not required:
        part.pop("required", None)
    errors = list(jsonschema.Draft202012Validator(part).iter_errors(values))
    if errors:
        message = _explain(jsonschema.exceptions.best_match(errors), part, values)
        raise ConfigError(message.replace("config key '", f"{label} key '", 1).replace(
            f"{label} key '<top level>'", label))


def check_setting_values(values: dict[str, Any]) -> None:
    """A setting given as keys and values (``offshelf sample --setting``) within the schema's bounds
    for a config's ``bases`` and table rows (``$defs/base``), plus its ``regime``."""
    if not isinstance(values, dict):
        raise ConfigError(f"setting: expected a mapping of setting keys, got {type(values).__name__}")
    from dataclasses import fields

    from offshelf.settings import Setting

    known = [f.name for f in fields(Setting)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown setting key(s) {unknown}; allowed keys: {', '.join(known)}")
    rest = {k: v for k, v in values.items() if k != "regime"}
    check_section(rest, ("$defs", "base"), "setting")


def check_respacing(config: dict[str, Any]) -> int | None:
    """``sampling.respacing`` must keep at least one step in every section and no more steps than
    the schedule has (otherwise the sampler fails at job time with an IndexError). Returns the
    number of respaced steps, or None when the backbone takes no respacing."""
    from offshelf.backends import resolve
    from offshelf.backends.capabilities import Capability
    from offshelf.diffusion import space_timesteps

    respacing = config.get("sampling", {}).get("respacing")
    cls = resolve(config["backbone"])
    if respacing is None or Capability.RESPACING not in cls.capabilities:
        return None
    steps = cls.num_train_timesteps
    sections = [] if respacing.startswith("ddim") else [int(c) for c in respacing.split(",")]
    if (respacing.startswith("ddim") and int(respacing[4:]) < 1) or any(c < 1 for c in sections):
        raise ConfigError(f"config key 'sampling.respacing' = {respacing!r}: every section needs at least 1 step")
    try:
        return len(space_timesteps(steps, respacing))
    except ValueError as err:
        raise ConfigError(f"config key 'sampling.respacing' = {respacing!r}: not possible with the "
                          f"{steps}-step schedule of backbone {config['backbone']!r} ({err})") from err


def check_paths(config: dict[str, Any]) -> None:
    """Every output goes under ``<results>/<experiment>`` or ``<results>/logs/<experiment>``:
    prove both resolve inside ``results`` (a symlinked experiment folder pointing elsewhere is
    refused too: point ``results`` itself at the other disk), that ``results`` is not the
    filesystem root, and that none of these is an existing non-folder (Snakemake would fail
    mid-run with a traceback)."""
    results = Path(config["results"])
    root = results.resolve()
    if root == Path(root.anchor):
        raise ConfigError(f"config key 'results' = {config['results']!r} is the filesystem root; "
                          f"expected a folder for this workflow's outputs")
    experiment = config["experiment"]
    for folder in (results, results / experiment, results / "logs", results / "logs" / experiment):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"config key 'results' = {config['results']!r}: {folder} exists and is not a folder")
    for folder in (results / experiment, results / "logs" / experiment):
        resolved = folder.resolve()
        if resolved == root or not resolved.is_relative_to(root):
            raise ConfigError(f"config key 'experiment' = {experiment!r}: {folder} resolves to {resolved}, "
                              f"outside the results folder {root}")
    for folder in (results / experiment, results / "logs" / experiment):
        check_links_inside(folder, root, config["results"])
    if "results_doc" in config:  # the one output outside `results`: the generated part of a results page
        from offshelf.results_doc import ResultsDocError, check_results_doc

        try:
            check_results_doc(config["results_doc"])
        except ResultsDocError as err:
            raise ConfigError(str(err)) from None


def check_links_inside(folder: Path, root: Path, results_value: str) -> None:
    """Every output folder the run writes lies under ``folder`` (figures, report, samples, metrics,
    models, calibration, search, grids, reference, tune, and the logs' sub-folders): no symbolic
    link anywhere below it, to a folder or a file, may lead outside ``root`` (a job would write
    there). Existing entries only (what does not exist yet is made inside); the walk never follows
    a link, so it costs one directory listing per existing folder."""
    if not folder.is_dir() or folder.is_symlink():
        return
    stack = [folder]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:  # unreadable: Snakemake reports it naming the file
            continue
        for entry in entries:
            if entry.is_symlink():
                path = Path(entry.path)
                target = path.resolve()
                if target == root or not target.is_relative_to(root):
                    raise ConfigError(f"config key 'results' = {results_value!r}: {path} is a link to {target}, "
                                      f"outside the results folder {root}, and the run writes there; replace the "
                                      f"link by a folder (or point 'results' itself at the other disk)")
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))


def backend_schema(cls: type) -> dict[str, Any]:
    """A backend class's part of the config schema (``config_schema``: a mapping, or a YAML file
    beside the module of the class that sets it), as ``{"properties": ..., "$defs": ...}``."""
    fragment = cls.config_schema
    if fragment is None:
        return {}
    if isinstance(fragment, str):
        owner = next(k for k in cls.__mro__ if "config_schema" in vars(k))
        package = sys.modules[owner.__module__].__spec__.parent
        fragment = yaml.safe_load(resources.files(package).joinpath(fragment).read_text())
    unknown = set(fragment) - {"properties", "$defs"}
    if unknown:
        raise ConfigError(f"backend {cls.name!r}: config_schema keys {sorted(unknown)}; expected properties, $defs")
    return dict(fragment)


def with_backend_schema(schema: dict[str, Any], backbone: str) -> dict[str, Any]:
    """The main schema with the backend's own sections (:func:`backend_schema`) in place of their
    placeholders; its ``$defs`` beside the main ones (a clash is an error, not an override)."""
    from offshelf.backends import resolve

    fragment = backend_schema(resolve(backbone))
    taken = [key for key in fragment.get("properties", {})
             if key in schema["properties"] and not set(schema["properties"][key]) <= {"type", "description"}]
    if taken:  # a backend owns its own section (a placeholder in the main schema), never a shared one
        raise ConfigError(f"backbone {backbone!r}: its config_schema redefines the shared config keys {taken}")
    out = dict(schema, properties=dict(schema["properties"], **fragment.get("properties", {})))
    clash = set(fragment.get("$defs", {})) & set(schema.get("$defs", {}))
    if clash:
        raise ConfigError(f"backbone {backbone!r}: its config_schema redefines $defs {sorted(clash)} of the main schema")
    out["$defs"] = dict(schema.get("$defs", {}), **fragment.get("$defs", {}))
    return out


def validate_config(config: dict[str, Any], schema_path: str | Path | None = None) -> dict[str, Any]:
    """Validate ``config`` (see the module docstring for the order of the checks); returns it."""
    validated_plan(config, schema_path)
    return config


def validated_plan(config: dict[str, Any], schema_path: str | Path | None = None):
    """Validate ``config`` and return its plan (:class:`offshelf.planning.plan.Plan`), built once:
    the checks that need the table rows read them from it."""
    check_schema(config, schema_path)
    plan = checked_plan(config)
    check_figure_steps(config, check_respacing(config))
    check_evaluation_sizes(config, plan)
    check_labels(config)
    check_paths(config)
    check_capabilities(config, plan)
    check_judge(config, plan)
    return plan


def check_schema(config: dict[str, Any], schema_path: str | Path | None = None) -> None:
    """The checks that need no table row: backbone, finite values, the schema, scale grids, calibration."""
    import jsonschema

    if not isinstance(config, dict):
        raise ConfigError(f"config: expected a mapping of config keys at the top level, got {type(config).__name__}")
    check_backbone(config)
    check_config_values_finite(config)
    schema = with_backend_schema(yaml.safe_load(schema_text(schema_path)), config["backbone"])
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        # the most specific error first: oneOf wrappers hide their useful context
        best = jsonschema.exceptions.best_match(errors)
        raise ConfigError(_explain(best, schema, config))
    for regime in config["regimes"]:
        if "search" not in config and regime not in config.get("scales", {}):  # `search` chooses scales instead
            raise ConfigError(f"config key 'scales.{regime}' is missing: regime {regime!r} needs a scale grid "
                              f"(or give a 'search' section)")
    check_calibration(config)
    check_bootstrap(config)
    check_row_labels(config)
    if "pareto_in_all" in config and "pareto" not in config:
        raise ConfigError(f"config key 'pareto_in_all' = {config['pareto_in_all']}: the config has no 'pareto' "
                          f"table to run (give one, or remove the key)")


def check_row_labels(config: dict[str, Any]) -> None:
    """Row labels unique within a table: the report keys a table's rows (and sample grids) by label,
    so a second row with a label already used would silently replace the first."""
    for table, spec in config.get("tables", {}).items():
        seen: dict[str, int] = {}
        for position, row in enumerate(spec.get("rows", [])):
            label = row.get("label")
            if label in seen:
                raise ConfigError(f"config key 'tables.{table}.rows[{position}].label' = {label!r}: table {table!r} "
                                  f"already has a row with this label (rows[{seen[label]}]); labels must be unique "
                                  f"within a table")
            seen[label] = position


def check_bootstrap(config: dict[str, Any]) -> None:
    """``evaluation.bootstrap``: 0 (no intervals) or enough resamples for a 95 % interval
    (:data:`offshelf.statistics.MIN_RESAMPLES`, justified in docs/statistics.md)."""
    from offshelf.statistics import check_num_resamples

    try:
        check_num_resamples(config.get("evaluation", {}).get("bootstrap", 0), "config key 'evaluation.bootstrap'")
    except ValueError as err:
        raise ConfigError(str(err)) from None


def checked_plan(config: dict[str, Any]):
    """The config's plan; a runaway job count (refused by arithmetic before any row is built) or an
    invalid row stops here as a ConfigError naming the key."""
    from offshelf.planning.costs import TooManyJobsError
    from offshelf.planning.plan import build_plan

    try:
        return build_plan(config)
    except TooManyJobsError as err:
        raise ConfigError(str(err)) from err
    except ValueError as err:
        message = str(err)  # a row's search names its own key ('search.<key>')
        raise ConfigError(message if message.startswith("config key ") else f"config key 'tables': {err}") from err


def check_capabilities(config: dict[str, Any], plan) -> None:
    """What the config asks of its backend must be among the capabilities the backend class
    declares (``capabilities``; nothing is called): one line naming the backbone, the capability
    and the config key that needs it."""
    from offshelf.backends import create, spec_from_config
    from offshelf.backends.base import Trained
    from offshelf.backends.capabilities import Capability, UnsupportedError, require

    backend = create(spec_from_config(config))
    needs: list[tuple[Capability, str]] = []
    figures = config.get("figures", {})
    if plan.probes:
        needs.append((Capability.CALIBRATION, "calibration probes (the ice column, figures.figure1/figure2)"))
    if "figure4" in figures:
        needs.append((Capability.GRADIENTS, "figures.figure4"))
    if "tune" in config:
        needs.append((Capability.TUNING, "the tune section"))
    try:
        sources = [backend.evaluation_files()] + [backend.files(s) for s in plan.settings.values()]
    except ValueError:
        sources = [backend.evaluation_files()]  # a setting's own error is check_judge's to report
    trained = sorted({s.role for files in sources for s in files.values() if isinstance(s, Trained)})
    if trained:
        needs.append((Capability.TRAINING, f"its trained roles {trained}"))
    for capability, key in needs:
        try:
            require(backend, capability, key)
        except UnsupportedError as err:
            raise ConfigError(f"config key 'backbone' = {config['backbone']!r}: {err}") from None
    check_levers(config, backend)


def check_levers(config: dict[str, Any], backend) -> None:
    """The speed levers of ``sampling:`` must be ones the backend declares
    (:data:`offshelf.backends.capabilities.LEVERS`), and the denoiser's precision set in one place."""
    from offshelf.backends.capabilities import unsupported_lever

    reason = unsupported_lever(backend, config["sampling"])
    if reason:
        raise ConfigError(reason)
    if "denoiser" in (config["sampling"].get("precision") or {}) and "fp16" in config.get("imagenet", {}):
        raise ConfigError("config keys 'imagenet.fp16' and 'sampling.precision.denoiser' both set the denoiser's "
                          "precision; keep sampling.precision.denoiser (fp16 is ADM's own conversion)")


def check_judge(config: dict[str, Any], plan) -> None:
    """The evaluation network must not be a classifier that guides any setting ``plan`` holds
    (offshelf.judge.check_judge_is_not_a_guide: same source, file or content)."""
    from offshelf.backends import create, spec_from_config
    from offshelf.backends.base import Trained
    from offshelf.judge import JudgeIsGuideError, check_judge_is_not_a_guide
    from offshelf.planning.params import pretrained_path
    from offshelf.settings import probe_setting

    def path_of(source) -> str:  # where the workflow's rules put each file (workflow/rules/common.smk)
        if isinstance(source, Trained):
            return f"{config['results']}/{config['experiment']}/models/{source.role}.pt"
        return pretrained_path(config, source.name)

    settings = list(plan.settings.values()) + [probe_setting(p) for p in plan.probes]
    try:
        check_judge_is_not_a_guide(create(spec_from_config(config)), settings, path_of,
                                   config.get("checkpoints", {}).get("registry"))
    except JudgeIsGuideError as err:
        raise ConfigError(f"config: {err}") from None
    except ValueError as err:  # a setting's files: an unknown network, Softplus on a GELU network
        raise ConfigError(f"config key 'tables': {err}") from None


def check_calibration(config: dict[str, Any]) -> None:
    """Guided calibration (``calibration.trajectories: [unguided, guided]``) needs a scale for every
    regime, and comes beside the unguided one (the ``ice`` column and Figures 1-2), never instead."""
    calibration = config.get("calibration", {})
    trajectories = calibration.get("trajectories", ["unguided"])
    if "unguided" not in trajectories:
        raise ConfigError(f"config key 'calibration.trajectories' = {trajectories!r}: must include 'unguided' "
                          f"(the ice column and Figures 1-2); 'guided' adds ice_guided beside it")
    if "guided" in trajectories:
        for regime in config["regimes"]:
            if regime not in calibration.get("guided_scale", {}):
                raise ConfigError(f"config key 'calibration.guided_scale.{regime}' is missing: guided calibration "
                                  f"of regime {regime!r} needs its scale (e.g. guided_scale: {{cond: 1, uncond: 3}})")


def check_labels(config: dict[str, Any]) -> None:
    """Class labels the config names must exist in the backend's label space: Figure 4's label and
    the grids' classes (:func:`offshelf.grids.grid_options`, the check the workflow's grid rules make)."""
    from offshelf.backends import resolve
    from offshelf.grids import GridConfigError, grid_options

    num_classes = resolve(config["backbone"]).num_classes
    label = config.get("figures", {}).get("figure4", {}).get("label")
    if label is not None and num_classes and label >= num_classes:
        raise ConfigError(f"config key 'figures.figure4.label' = {label}: backbone {config['backbone']!r} has "
                          f"classes 0..{num_classes - 1}")
    if "grids" in config:
        try:
            grid_options(config["grids"], num_classes)
        except GridConfigError as err:
            key, _, why = str(err).partition(": ")
            raise ConfigError(f"config key '{key}': {why}") from None


def check_figure_steps(config: dict[str, Any], count: int | None) -> None:
    """Figure 4's ``steps`` are steps of the respaced sampler (0 .. N-1 for the ``count`` = N steps
    :func:`check_respacing` found; None: the backbone takes no respacing): a step it never takes
    would fail the figure job (after the old figure was removed)."""
    steps = config.get("figures", {}).get("figure4", {}).get("steps")
    if not steps or count is None:
        return
    beyond = [s for s in steps if s >= count]
    if beyond:
        raise ConfigError(f"config key 'figures.figure4.steps' = {steps}: {beyond} beyond the {count} steps of "
                          f"sampling.respacing {config['sampling']['respacing']!r} (steps 0..{count - 1})")


def check_evaluation_sizes(config: dict[str, Any], plan) -> None:
    """Every evaluation reads more samples than ``evaluation.nhood_size`` (precision and recall
    take each sample's k-th nearest neighbour among the others; FID needs two samples at least)."""
    k = config.get("evaluation", {}).get("nhood_size", 3)
    counts = [(n, "sampling.num_samples" if n == config["sampling"]["num_samples"] else "tables.<table>.num_samples")
              for _, n in plan.evaluations.values()]
    counts += [(search.spec.low_fidelity, "search.low_fidelity") for search in plan.searches.values()]
    if not counts:
        return
    n, key = min(counts)
    if n <= k:
        raise ConfigError(f"config keys '{key}' = {n} and 'evaluation.nhood_size' = {k}: an evaluation reads {n} "
                          f"samples, and precision and recall need more than nhood_size")


BASE_KEY = "base"  # a config file's explicit base: another config file, relative to this one


def read_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping, not yet validated: the one way offshelf reads a workflow config
    (the Snakefile, ``offshelf plan``, ``check-config`` and every ``--config`` option).

    A file is complete, or names its base explicitly: ``base: config.yaml`` (a path relative to
    the file's own folder) reads that file first (itself read the same way, so bases chain) and
    lays this file's keys over it, mappings merged key by key, lists and values replaced. Nothing
    else is merged in: a file without ``base`` is the whole config. A relative ``results_doc`` is
    read from the folder of the file that names it (:func:`anchor_results_doc`)."""
    path = Path(path)
    config = read_yaml(path)
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    anchor_results_doc(config, path)
    if BASE_KEY not in config:
        return config
    base = config.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: config key 'base' = {base!r}: must be the path of another config file "
                          f"(relative to {path.parent or '.'})")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if base_path.resolve() in (*_seen, path.resolve()):
        raise ConfigError(f"{path}: config key 'base' = {base!r}: the bases form a cycle")
    if not base_path.is_file():
        raise ConfigError(f"{path}: config key 'base' = {base!r}: no such file {base_path}")
    return merge(read_config(base_path, (*_seen, path.resolve())), config)


def anchor_results_doc(config: dict[str, Any], path: Path) -> None:
    """A relative ``results_doc`` names a page beside the config file that says so (config.yaml's
    docs/results.md is the repository's page), not one in whatever folder a command runs in: made
    relative to the file's own folder here, so that the workflow, ``offshelf plan`` and
    ``check-config`` mean the same page from any working directory."""
    page = config.get("results_doc")
    if isinstance(page, str) and page and not Path(page).is_absolute():  # anything else: the schema's to refuse
        config["results_doc"] = os.path.normpath(path.parent / page)


def workflow_config_file(configfiles) -> Path:
    """The one config file a Snakemake run reads: its ``--configfile``, else ``./config.yaml``.
    Two files would be an implicit merge: an overlay names its base with ``base:`` instead."""
    files = [Path(f) for f in configfiles or ()]
    if len(files) > 1:
        raise ConfigError(f"--configfile {' '.join(map(str, files))}: give one config file; a file that changes "
                          f"another names it as its base (`base: {files[0].name}`, relative to the file)")
    if files:
        return files[0]
    if not Path("config.yaml").is_file():
        raise ConfigError("no config: give --configfile FILE (or run in a folder with config.yaml)")
    return Path("config.yaml")


TEXT2IMAGE_KEY = "prompts"  # a text-to-image config (offshelf text2image --config) has it; a workflow config never
# a diffusers text-to-image config (the text2image_diffusers target) has both it and `prompts`
TEXT2IMAGE_DIFFUSERS_KEY = "pipeline"
TEXT2IMAGE_DIFFUSERS_SCHEMA = "schemas/text2image_diffusers.schema.yaml"  # inside the package, as SCHEMA_RESOURCE


def check_config_file(path: str | Path) -> str:
    """Validate one config file as it will be used; return its kind, 'workflow', 'text2image' or
    'text2image_diffusers'. A workflow config is read by :func:`read_config` (its ``base:``
    resolved) and validated whole; a text-to-image config (top-level ``prompts``) by
    :func:`offshelf.text2image.load_config`; one that also names a ``pipeline`` (the workflow's
    text2image_diffusers target) by :func:`offshelf.integrations.clip_schedules.load_config`."""
    data = read_yaml(path)
    if isinstance(data, dict) and TEXT2IMAGE_DIFFUSERS_KEY in data and "backbone" not in data:
        load_text2image_diffusers_config(path)
        return "text2image_diffusers"
    if isinstance(data, dict) and TEXT2IMAGE_KEY in data and "backbone" not in data:
        from offshelf.text2image import load_config as load_text2image

        try:
            load_text2image(path)
        except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
            raise ConfigError(str(err).strip("'\"")) from err
        return "text2image"
    validate_config(read_config(path))
    return "workflow"


def load_text2image_diffusers_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a config of the text2image_diffusers target
    (:mod:`offshelf.integrations.clip_schedules`): its schema
    (``schemas/text2image_diffusers.schema.yaml``), then what a schema cannot say; an error is
    one :class:`ConfigError` line naming the file and the key."""
    import jsonschema

    from offshelf import statistics

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    cfg = read_yaml(path)
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    try:
        check_config_values_finite(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    schema = yaml.safe_load(resources.files("offshelf").joinpath(TEXT2IMAGE_DIFFUSERS_SCHEMA).read_text())
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(cfg),
                    key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        raise ConfigError(f"{path}: {_explain(errors[0], schema, cfg)}")
    names = [run["name"] for run in cfg["runs"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: config key 'runs': run names must be unique, got {names}")
    window = cfg["guidance"].get("window", [0.0, 1.0])
    if not window[0] < window[1]:
        raise ConfigError(f"{path}: config key 'guidance.window' = {window}: expected [start, end] with start < end")
    if "num_resamples" in cfg.get("intervals", {}):  # absent: clip_schedules.DEFAULT_INTERVALS
        try:
            statistics.check_num_resamples(cfg["intervals"]["num_resamples"], "intervals.num_resamples")
        except ValueError as err:
            raise ConfigError(f"{path}: config key {err}") from None
    return cfg


def load_config(path: str | Path) -> dict[str, Any]:
    """A config file, validated."""
    return validate_config(read_config(path))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``, mappings merged key by key (how a file lies over its
    ``base:`` and how Snakemake's ``--config KEY=VALUE`` lies over the file)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out

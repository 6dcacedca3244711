"""Experiment settings: every knob the paper ablates, and a folder name derived from it.

A setting's name encodes exactly the parameters that change its samples (Paramspace-style), so
editing one value in the config requests a new folder and reruns only the jobs behind it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

REGIMES = ("cond", "uncond")
METHODS = ("unguided", "guided", "cfg", "best_of_n", "smc")
#: methods that run the guiding classifier (its files, its probe): a gradient per step (``guided``),
#: a score per candidate (``best_of_n``) or a potential per particle (``smc``; offshelf.samplers.particles)
CLASSIFIER_METHODS = ("guided", "best_of_n", "smc")
#: methods whose ``scale`` changes their samples (and that a guidance-scale search tunes): the
#: guidance scale s, and SMC's potential scale λ
SCALED_METHODS = ("guided", "smc")
CLASSIFIERS = ("offshelf", "finetuned", "combined")
INPUTS = ("x0", "xt")


def fmt(value: float) -> str:
    """Stable, readable number for file names: 3.0 → '3', 0.5 → '0.5', inf → 'inf'."""
    value = float(value)
    if math.isinf(value):
        return "inf"
    return f"{value:g}"


@dataclass(frozen=True)
class Setting:
    """One sampling configuration.

    ``regime``: ``cond`` feeds the class to the diffusion model (ADM-G setting), ``uncond``
    drops it so guidance is the only class signal. ``method``: ``unguided``, ``guided``
    (classifier guidance) or ``cfg`` (classifier-free guidance, ``cfg_scale`` w: ε_u + w(ε_c − ε_u)).
    ``classifier``: ``offshelf`` (clean-image network), ``finetuned`` (noise-aware, sees x_t and
    t) or ``combined`` (offshelf while step >= ``switch_step``, finetuned below: Table 2).
    ``softplus_beta = inf`` keeps ReLU. ``marginal_temperature`` is τ2 (τ1 = ``joint_temperature``).
    ``num_steps``: sampler steps where the backbone's sampler takes them (EDM's Heun steps; 0 = the
    backbone's default). ``network``: the off-the-shelf architecture (``resnet50``...; "" = the
    config's default). A guided setting keeps ``cfg_scale`` (DiT: guidance on top of CFG).
    ``num_steps``, ``network`` and a guided setting's ``cfg_scale`` enter the name only when they
    differ from their defaults (``_n<steps>``, ``_<network>``, ``_w<w>``), so names made before these
    knobs existed never change; a CFG setting's name always holds its w (``cfg-w<w>``), and neither
    an unguided nor a CFG name holds a network (:meth:`canonical` resets it).
    ``S_churn``, ``S_min``, ``S_max``, ``S_noise``: EDM's stochastic sampler (NVlabs' names and
    meaning; only a backend declaring ``stochastic_sampling`` runs them). ``S_churn = 0`` is the
    deterministic sampler; then the other three change no sample and are reset in the name. Neither
    the name nor :meth:`to_dict` (a sample job's params) carries them at their defaults: settings
    without churn keep their names and jobs.
    ``through_denoiser`` (guided): the gradient is backpropagated through the denoiser and the x̂0
    formula (``_td`` in the name). ``best_of_n``: ``num_candidates`` unguided samples per image, the
    one the guiding classifier scores highest kept (``_bon<N>``); ``smc``: ``num_particles`` unguided
    particles per image resampled after every ``resample_every``-th step with the potential
    λ·log p̃(y | x̂0), λ = ``scale`` (``_s<λ>_smc<k>-m<m>``); :mod:`offshelf.samplers.particles`. Like
    the churn keys, these are left out of :meth:`to_dict` at their defaults.
    """

    regime: str = "cond"
    method: str = "guided"
    classifier: str = "offshelf"
    input: str = "x0"
    softplus_beta: float = math.inf
    joint_temperature: float = 1.0
    marginal_temperature: float = 1.0
    sine_factor: float = 0.0
    scale: float = 1.0
    recurrent_steps: int = 1
    cfg_scale: float = 1.0
    switch_step: int = 50
    num_steps: int = 0
    network: str = ""
    S_churn: float = 0.0
    S_min: float = 0.0
    S_max: float = math.inf
    S_noise: float = 1.0
    through_denoiser: bool = False
    num_candidates: int = 1
    num_particles: int = 1
    resample_every: int = 1

    def __post_init__(self):
        for name, allowed in (("regime", REGIMES), ("method", METHODS), ("classifier", CLASSIFIERS), ("input", INPUTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"setting key {name!r} = {getattr(self, name)!r}; allowed values: {', '.join(allowed)}")
        if not self.softplus_beta > 0:
            raise ValueError(f"setting key 'softplus_beta' must be > 0 (inf for ReLU), got {self.softplus_beta}")
        if self.num_steps < 0:
            raise ValueError(f"setting key 'num_steps' must be >= 0 (0: the backbone's default), got {self.num_steps}")
        if self.S_churn < 0 or self.S_min < 0 or not self.S_noise > 0:
            raise ValueError(f"setting: EDM's churn needs S_churn >= 0, S_min >= 0, S_noise > 0; got "
                             f"S_churn={self.S_churn}, S_min={self.S_min}, S_noise={self.S_noise}")
        if self.S_min > self.S_max:
            raise ValueError(f"setting: S_min ({self.S_min}) above S_max ({self.S_max}) churns no step")
        if self.recurrent_steps < 1:
            raise ValueError(f"setting key 'recurrent_steps' must be >= 1, got {self.recurrent_steps}")
        for key in ("num_candidates", "num_particles", "resample_every"):
            if getattr(self, key) < 1:
                raise ValueError(f"setting key {key!r} must be >= 1, got {getattr(self, key)}")
        if self.uses_classifier and self.classifier == "finetuned" and self.input != "xt":
            raise ValueError("setting: the fine-tuned (noise-aware) classifier takes x_t; set input: xt")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Setting":
        known = {f.name: f.type for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ValueError(f"unknown setting key(s) {unknown}; allowed keys: {', '.join(known)}")
        clean = {}
        for key, value in values.items():  # numpy scalars and YAML strings → plain Python
            if key in ("regime", "method", "classifier", "input", "network"):
                clean[key] = str(value)
            elif key in ("recurrent_steps", "switch_step", "num_steps") + PARTICLE_KEYS:
                clean[key] = int(value)
            elif key == "through_denoiser":
                if not isinstance(value, (bool, int)) or value not in (0, 1):
                    raise ValueError(f"setting key 'through_denoiser' must be true or false, got {value!r}")
                clean[key] = bool(value)
            else:
                clean[key] = float(value)
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        for key in CHURN_KEYS + PARTICLE_KEYS + ("through_denoiser",):  # at their defaults they are absent:
            # older jobs' params stay as they were
            if values[key] == getattr(Setting, key):
                values.pop(key)
        return values

    def churn(self) -> dict[str, float]:
        """EDM's churn keyword arguments (``edm_sample``'s), the sampler's defaults when S_churn = 0."""
        s = self.canonical()
        return {key: getattr(s, key) for key in CHURN_KEYS}

    @property
    def uses_classifier(self) -> bool:
        """Whether the guiding classifier runs (:data:`CLASSIFIER_METHODS`)."""
        return self.method in CLASSIFIER_METHODS

    def canonical(self) -> "Setting":
        """Reset the knobs this method ignores, so equal experiments share one name."""
        churn = {key: getattr(self, key) for key in CHURN_KEYS} if self.S_churn else {}
        if self.method in ("best_of_n", "smc"):  # no gradient: schedule, recurrence, Σ_max do not apply
            kept = dict(regime=self.regime, method=self.method, classifier=self.classifier, input=self.input,
                        softplus_beta=self.softplus_beta, joint_temperature=self.joint_temperature,
                        marginal_temperature=self.marginal_temperature, network=self.network,
                        num_steps=self.num_steps, **churn)
            if self.classifier == "combined":
                kept["switch_step"] = self.switch_step
            if self.method == "best_of_n":
                return Setting(**kept, num_candidates=self.num_candidates)
            return Setting(**kept, scale=self.scale, num_particles=self.num_particles,
                           resample_every=self.resample_every)
        if self.method == "unguided":
            return Setting(regime=self.regime, method="unguided", num_steps=self.num_steps, **churn)
        if self.method == "cfg":
            return Setting(regime=self.regime, method="cfg", cfg_scale=self.cfg_scale, num_steps=self.num_steps,
                           **churn)
        s = self if churn else replace(self, **{key: getattr(Setting, key) for key in CHURN_KEYS})
        s = replace(s, **{key: getattr(Setting, key) for key in PARTICLE_KEYS})
        return s if s.classifier == "combined" else replace(s, switch_step=Setting.switch_step)

    @property
    def name(self) -> str:
        s = self.canonical()
        steps = f"_n{s.num_steps}" if s.num_steps else ""
        if s.S_churn:
            steps = f"_churn{fmt(s.S_churn)}-{fmt(s.S_min)}-{fmt(s.S_max)}-{fmt(s.S_noise)}" + steps
        if s.method == "unguided":
            return f"{s.regime}_unguided{steps}"
        if s.method == "cfg":
            return f"{s.regime}_cfg-w{fmt(s.cfg_scale)}{steps}"
        beta = "relu" if math.isinf(s.softplus_beta) else f"sp{fmt(s.softplus_beta)}"
        classifier = (f"{s.regime}_{s.classifier}-{s.input}_{beta}_tj{fmt(s.joint_temperature)}"
                      f"_tm{fmt(s.marginal_temperature)}")
        if s.method == "best_of_n":
            name = f"{classifier}_bon{s.num_candidates}"
        elif s.method == "smc":
            name = f"{classifier}_s{fmt(s.scale)}_smc{s.num_particles}-m{s.resample_every}"
        else:
            name = f"{classifier}_g{fmt(s.sine_factor)}_s{fmt(s.scale)}_r{s.recurrent_steps}"
            name += "_td" if s.through_denoiser else ""
        if s.classifier == "combined":
            name += f"_sw{s.switch_step}"
        if s.cfg_scale != Setting.cfg_scale:
            name += f"_w{fmt(s.cfg_scale)}"
        if s.network:
            name += f"_{network_slug(s.network)}"
        return name + steps

    @property
    def probe(self) -> str:
        """Name of the classifier variant alone (what calibration measures): classifier,
        input and activation, independent of scale, schedule and regime."""
        beta = "relu" if math.isinf(self.softplus_beta) else f"sp{fmt(self.softplus_beta)}"
        name = f"{self.classifier}-{self.input}_{beta}"
        name += f"_sw{self.switch_step}" if self.classifier == "combined" else ""
        # the network last, after a marker: its own name may hold "_" (convnext_tiny)
        return name + (f"{PROBE_NETWORK_MARKER}{network_slug(self.network)}" if self.network else "")


PROBE_NETWORK_MARKER = "_net-"
CHURN_KEYS = ("S_churn", "S_min", "S_max", "S_noise")
PARTICLE_KEYS = ("num_candidates", "num_particles", "resample_every")


def network_slug(network: str) -> str:
    """A network as a file-name part, reversibly: ``"clip:ViT-B-32/openai"`` -> ``"clip-ViT-B-32--openai"``
    (torchvision and digits names are file names already)."""
    if network.startswith("clip:"):
        return "clip-" + network.removeprefix("clip:").replace("/", "--")
    return network


def network_from_slug(slug: str) -> str:
    """Inverse of :func:`network_slug`."""
    if slug.startswith("clip-") and "--" in slug:
        return "clip:" + slug.removeprefix("clip-").replace("--", "/", 1)
    return slug


def probe_setting(probe: str) -> Setting:
    """Inverse of :attr:`Setting.probe` (enough to rebuild the classifier)."""
    probe, _, network = probe.partition(PROBE_NETWORK_MARKER)
    if network:
        return replace(probe_setting(probe), network=network_from_slug(network))
    parts = probe.split("_")
    classifier, inp = parts[0].split("-")
    beta = math.inf if parts[1] == "relu" else float(parts[1][2:])
    switch = int(parts[2][2:]) if len(parts) > 2 else Setting.switch_step
    return Setting(classifier=classifier, input=inp, softplus_beta=beta, switch_step=switch)

"""The samplers' one calling contract (``offshelf.samplers``' docstring), the one guidance value
object, the one spelling ``sine_factor``, and no module reaching into another's private names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import offshelf
from offshelf import guidance as guidance_module
from offshelf.guidance import ClassifierGuidance, Guidance
from offshelf.samplers import ddpm, dit, edm, particles

SRC = Path(offshelf.__file__).parent
P = inspect.Parameter

# sampler -> (its three positional parameters: network, starting noise or generator, schedule)
SAMPLERS = {
    ddpm.ddpm_sample: ("model", "rng", "diffusion"),
    edm.edm_sample: ("net", "latents", "num_steps"),
    dit.dit_sample: ("model", "rng", "diffusion"),
    particles.best_of_n_sample: ("model", "rng", "diffusion"),
    particles.smc_sample: ("model", "rng", "diffusion"),
}
SHARED_KEYWORDS = {"guidance": None, "callback": None, "progress": False}
NVLABS_EDM_KNOBS = {"num_steps": 18, "sigma_min": 0.002, "sigma_max": 80, "rho": 7, "S_churn": 0, "S_min": 0,
                    "S_max": float("inf"), "S_noise": 1}


@pytest.mark.parametrize("sampler", list(SAMPLERS), ids=lambda f: f.__name__)
def test_every_sampler_has_the_shared_signature(sampler):
    params = list(inspect.signature(sampler).parameters.values())
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    assert tuple(p.name for p in positional) == SAMPLERS[sampler]
    assert [p.kind for p in params[:3]] == [P.POSITIONAL_OR_KEYWORD] * 3
    assert all(p.default is P.empty for p in positional[:2])  # the network and the noise are always given
    assert not any(p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD) for p in params)
    # right after the `*`: guidance, callback, progress, with the shared defaults
    assert [(p.name, p.kind, p.default) for p in params[3:6]] == [
        (name, P.KEYWORD_ONLY, default) for name, default in SHARED_KEYWORDS.items()]
    # every family knob is keyword-only too
    assert all(p.kind is P.KEYWORD_ONLY for p in params[3:])


def test_schedule_is_required_except_edms_num_steps():
    assert inspect.signature(ddpm.ddpm_sample).parameters["diffusion"].default is P.empty
    assert inspect.signature(dit.dit_sample).parameters["diffusion"].default is P.empty
    assert inspect.signature(edm.edm_sample).parameters["num_steps"].default == 18


def test_edm_keeps_nvlabs_names_and_defaults():
    params = inspect.signature(edm.edm_sample).parameters
    assert {name: params[name].default for name in NVLABS_EDM_KNOBS} == NVLABS_EDM_KNOBS


def test_step_functions_take_guidance_keyword_only():
    for step in (ddpm.ddpm_step, dit.dit_step):
        param = inspect.signature(step).parameters["guidance"]
        assert param.kind is P.KEYWORD_ONLY and param.default is None
        assert not {"config", "scale", "sine_factor", "target", "schedule"} & set(inspect.signature(step).parameters)


def test_guidance_is_the_one_value_object():
    for module in (ddpm, edm, dit, guidance_module):
        assert not hasattr(module, "DDPMGuidanceConfig")
    for path in SRC.rglob("*.py"):
        assert "DDPMGuidanceConfig" not in path.read_text(), path
    with pytest.raises(Exception):  # frozen: a value, not a config to mutate
        Guidance(ClassifierGuidance(lambda x: x)).scale = 2.0
    for sampler in SAMPLERS:  # no sampler takes a guidance knob outside the value object
        assert not {"scale", "sine_factor", "config", "guidance_label", "schedule", "through_denoiser"} & set(
            inspect.signature(sampler).parameters), sampler.__name__


def test_a_field_the_family_cannot_honour_is_refused_by_name():
    classifier = ClassifierGuidance(lambda x: x.flatten(1)[:, :3], input="xt")
    latents = torch.zeros(1, 1, 2, 2)
    net = None  # refused before the network is touched
    for field, value in (("through_denoiser", True), ("sigma_max_mode", "official"), ("schedule", "sine")):
        with pytest.raises(ValueError, match=f"edm_sample cannot honour Guidance.{field}="):
            edm.edm_sample(net, latents, guidance=Guidance(classifier, **{field: value}), y=torch.eye(3)[:1])
    with pytest.raises(ValueError, match="Guidance.sigma_max_mode"):
        Guidance(classifier, sigma_max_mode="running")
    with pytest.raises(ValueError, match="Guidance.schedule"):
        Guidance(classifier, schedule="linear")


def _function_parameters(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            a = node.args
            for arg in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg):
                if arg is not None:
                    yield node, arg.arg


def test_sine_factor_is_the_only_spelling():
    """No function parameter is named ``gamma`` (EDM's churn γ is a loop local, as in NVlabs'
    ``edm_sampler``, and is not a parameter)."""
    offenders = [f"{path.relative_to(SRC)}:{node.lineno}" for path in SRC.rglob("*.py")
                 for node, name in _function_parameters(ast.parse(path.read_text())) if name == "gamma"]
    assert offenders == []
    for fn in (guidance_module.sine_bump, guidance_module.adm_guidance_weight, guidance_module.edm_step_size,
               guidance_module.dit_guidance_weight):
        assert "sine_factor" in inspect.signature(fn).parameters, fn.__name__
    assert "sine_factor" in {f.name for f in Guidance.__dataclass_fields__.values()}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(text: str, module: str, is_package: bool = False) -> list[str]:
    """``from offshelf.x import _y`` (or ``from . import _y``), imports of a private module, and
    ``offshelf.x._y`` attribute reads of another offshelf module's private names, in one file
    (``module``: its dotted name)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            source = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([source] if source else []))
            if not source.startswith("offshelf") or source == module:
                continue
            found += [f"{module}:{node.lineno} imports {source}.{a.name}" for a in node.names if _is_private(a.name)]
            found += [f"{module}:{node.lineno} imports private module {source}"
                      for part in source.split(".") if _is_private(part)]
        elif isinstance(node, ast.Import):
            found += [f"{module}:{node.lineno} imports private module {a.name}" for a in node.names
                      if a.name.startswith("offshelf") and any(_is_private(p) for p in a.name.split("."))]
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            chain, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                chain.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "offshelf":
                found.append(f"{module}:{node.lineno} reads offshelf.{'.'.join(reversed(chain))}")
    return found


def test_the_architecture_check_sees_private_imports():
    code = ("from offshelf.samplers.ddpm import _model_output, ddpm_step\n"
            "from .metrics import _squared_distances\n"
            "from . import _private_module\n"
            "import offshelf.metrics\n"
            "x = offshelf.metrics._squared_distances\n"
            "from offshelf.guidance import __all__\n"
            "from offshelf.tuning import _own_helper\n")
    found = private_imports(code, "offshelf.tuning")
    assert found == ["offshelf.tuning:1 imports offshelf.samplers.ddpm._model_output",
                     "offshelf.tuning:2 imports offshelf.metrics._squared_distances",
                     "offshelf.tuning:3 imports offshelf._private_module",
                     "offshelf.tuning:5 reads offshelf.metrics._squared_distances"]
    assert private_imports("from .ddpm import _detach\n", "offshelf.samplers", is_package=True) == [
        "offshelf.samplers:1 imports offshelf.samplers.ddpm._detach"]


def test_no_module_imports_another_modules_private_names():
    offenders = [hit for path in sorted(SRC.rglob("*.py"))
                 for hit in private_imports(path.read_text(), _module_name(path), path.name == "__init__.py")]
    assert offenders == []


# --- the contract in use: stub networks, one step of each family --------------------------------

class _StubEDM:
    sigma_min, sigma_max = 0.002, 80.0

    def round_sigma(self, sigma):
        return sigma

    def __call__(self, x, sigma, class_labels):
        return 0.5 * x


class _StubDiT:
    null_label = 10

    def __call__(self, z, t, y):
        return 0.1 * torch.cat([z, z], dim=1) + 0.01 * y.view(-1, 1, 1, 1)


class _StubVAE(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))

    def decode(self, z):
        return SimpleNamespace(sample=self.weight * z[:, :3])


def _linear_classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))


def _run_each_sampler(guided: bool, **fields):
    """One short run per family with the shared keywords only; returns sampler -> callback records."""
    from offshelf.diffusion import GaussianDiffusion
    from offshelf.seeding import StackedRandomGenerator

    records = {}
    y = torch.tensor([0, 2])
    for name in ("ddpm", "edm", "dit"):
        records[name] = []
        callback = lambda **kw: records[name].append(kw)  # noqa: E731
        if name == "ddpm":
            net = lambda x, t, y_: 0.1 * x  # noqa: E731
            g = Guidance(ClassifierGuidance(_linear_classifier()), **fields) if guided else None
            ddpm.ddpm_sample(net, StackedRandomGenerator([0, 1]), GaussianDiffusion.respaced(1000, "3", "linear",
                             "fixed_large"), guidance=g, callback=callback, progress=False, shape=(1, 4, 4), y=y)
        elif name == "edm":
            g = Guidance(ClassifierGuidance(_linear_classifier(), input="xt"), **fields) if guided else None
            latents = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            edm.edm_sample(_StubEDM(), latents, 3, guidance=g, callback=callback, progress=False,
                           y=torch.eye(3)[y])
        else:
            g = Guidance(ClassifierGuidance(_linear_classifier()), **fields) if guided else None
            dit.dit_sample(_StubDiT(), StackedRandomGenerator([0, 1]), dit.dit_diffusion("3"), guidance=g,
                           callback=callback, progress=False, vae=_StubVAE(), latent_shape=(4, 4, 4), y=y)
    return records


def test_every_callback_sees_the_shared_keys():
    for guided in (False, True):
        for name, record in _run_each_sampler(guided, scale=0.5, sine_factor=0.3).items():
            assert len(record) == 3, name
            for info in record:
                assert {"step", "x_t", "pred_xstart", "grad", "logits"} <= set(info), name
                assert (info["grad"] is None) == (not guided), name
    # step indices are each algorithm's own: DDPM/DiT count spaced steps down, EDM counts up
    steps = {name: [info["step"] for info in record] for name, record in _run_each_sampler(False).items()}
    assert steps == {"ddpm": [2, 1, 0], "edm": [0, 1, 2], "dit": [2, 1, 0]}


@pytest.mark.parametrize("sampler, field, value", [
    ("ddpm", "schedule", "sine"),
    ("dit", "through_denoiser", True),
    ("dit", "sigma_max_mode", "official"),
])
def test_ddpm_and_dit_refuse_what_they_cannot_honour(sampler, field, value):
    with pytest.raises(ValueError, match=rf"{sampler}_sample cannot honour Guidance\.{field}="):
        _run_each_sampler(True, **{field: value}) if sampler == "ddpm" else _only_dit(**{field: value})


def _only_dit(**fields):
    from offshelf.seeding import StackedRandomGenerator

    dit.dit_sample(_StubDiT(), StackedRandomGenerator([0, 1]), dit.dit_diffusion("3"),
                   guidance=Guidance(ClassifierGuidance(_linear_classifier()), **fields), vae=_StubVAE(),
                   latent_shape=(4, 4, 4), y=torch.tensor([0, 2]))

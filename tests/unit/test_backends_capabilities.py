"""A backend's optional capabilities are declared (``capabilities``), and the declaration is the
truth: every built-in backend and the toy plug-in declare exactly what they implement, and the
required core stays small (at most 7 members)."""

import inspect
import sys
from pathlib import Path

import pytest

from offshelf.backends import BACKENDS, create, resolve
from offshelf.backends.base import REQUIRED, Backend
from offshelf.backends.capabilities import MEMBERS, NEEDS, Capability, UnsupportedError, implemented, require

sys.path.insert(0, str(Path(__file__).parents[1] / "plugin"))
from toy_backend import ToyMixtureBackend  # noqa: E402

CLASSES = [resolve(name) for name in BACKENDS] + [ToyMixtureBackend]
IDS = [cls.name for cls in CLASSES]


def required_core(cls: type = Backend) -> set[str]:
    """Abstract members plus the class attributes a subclass must set (counted, not listed by hand)."""
    abstract = set(getattr(cls, "__abstractmethods__", ()))
    return abstract | {name for name in REQUIRED if name not in abstract}


def test_the_required_core_has_at_most_seven_members():
    core = required_core()
    assert core == set(REQUIRED) and len(core) <= 7, sorted(core)
    assert set(Backend.__abstractmethods__) == {"image_shape", "files", "load", "sample", "to_uint8",
                                                "feature_extractor"}


def test_backend_defines_no_capability_member():
    """Capability members live only on the backends that declare them: nothing to call to find out."""
    for capability, names in MEMBERS.items():
        for name in names:
            assert not hasattr(Backend, name), (capability, name)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_declared_capabilities_are_what_the_backend_implements(cls):
    declared = cls.capabilities
    assert all(isinstance(c, Capability) for c in declared)
    detectable = {c for c, names in MEMBERS.items() if names}
    assert declared & detectable == implemented(cls), (sorted(declared), sorted(implemented(cls)))
    for capability in declared:
        assert NEEDS.get(capability, frozenset()) <= declared, capability
        for name in MEMBERS[capability]:
            member = inspect.getattr_static(cls, name)
            assert member not in (None, ()), (capability, name)
    assert not inspect.isabstract(cls), f"{cls.name}: abstract members left {sorted(cls.__abstractmethods__)}"
    assert cls.num_classes > 0 and cls.name


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_chosen_classes_are_declared_exactly_where_sample_takes_labels(cls):
    """The flag `chosen_classes` (offshelf sample --classes) is a parameter of the required sample(),
    not a member: its declaration must match the signature, which no caller reads."""
    takes_labels = "labels" in inspect.signature(cls.sample).parameters
    assert (Capability.CHOSEN_CLASSES in cls.capabilities) == takes_labels, cls.name


def test_the_planner_reads_a_declaration_without_an_instance():
    assert "tuning" in resolve("digits").capabilities and "tuning" in resolve("adm128").capabilities
    assert "tuning" not in resolve("edm64").capabilities and "tuning" not in resolve("dit256").capabilities
    assert "training" in resolve("digits").capabilities and "training" not in resolve("adm128").capabilities


def test_options_narrow_an_instance_never_widen_it():
    edm = create({"name": "edm64", "options": {}})  # EDM's fid-refs hold mu/sigma only
    assert Capability.REFERENCE_FEATURES in type(edm).capabilities
    assert Capability.REFERENCE_FEATURES not in edm.capabilities and edm.capabilities < type(edm).capabilities
    adm = create({"name": "adm128", "options": {}})
    assert adm.capabilities == type(adm).capabilities


def test_an_undeclared_capability_is_one_line_naming_backend_and_capability():
    with pytest.raises(UnsupportedError, match=r"^backend 'edm64' does not declare capability 'gradient_trajectories' "
                                               r"\(figure 4 needs it\); a backend declaring it implements "
                                               r"gradient_trajectories$"):
        require(resolve("edm64"), "gradient_trajectories", "figure 4")


def test_a_backend_without_num_classes_is_refused():
    class NoClasses(ToyMixtureBackend):
        num_classes = 0

    with pytest.raises(TypeError, match="num_classes must be a positive int"):
        NoClasses({"std": 0.2})


def test_the_toy_plug_in_is_not_judged_by_a_guide():
    import numpy as np
    import torch

    from offshelf.images import to_uint8_nhwc
    from toy_backend import CleanClassifier, NearestMeanJudge, NoisyClassifier, class_means

    backend = ToyMixtureBackend({"std": 0.2})
    models = backend.load({}, {"respacing": "10"})
    judge = backend.feature_extractor({})
    assert judge.name == "nearest class mean"
    assert isinstance(models.offshelf, CleanClassifier) and isinstance(models.finetuned, NoisyClassifier)
    assert not issubclass(NearestMeanJudge, (CleanClassifier, NoisyClassifier))
    images = to_uint8_nhwc(class_means(3).float().view(3, 1, 4, 4), "round")
    assert np.argmax(judge.logits(images), 1).tolist() == [0, 1, 2]
    assert torch.is_tensor(models.offshelf.means)

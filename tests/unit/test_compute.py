"""Network work per sample: offshelf.compute's counts, the runtime counter's measurement through the
DDPM backend's sampling path (setting -> sampler -> guidance), and a hand count, all equal."""

import pytest
import torch
from torch import nn

from offshelf.backends.ddpm import DDPMModels, sample_batch
from offshelf.compute import CountingNetwork, Work, ddpm_work, measured_work, smc_potentials
from offshelf.diffusion import GaussianDiffusion
from offshelf.settings import Setting

T = 4  # spaced steps
CALIBRATED = dict(method="guided", softplus_beta=3.0, marginal_temperature=0.5, sine_factor=0.3, scale=2.0)

# setting -> (denoiser, classifier forwards, classifier backwards, denoiser backwards) per image, by hand:
# T = 4 steps; recurrence r re-runs the 3 steps before the last (4 + 3(r − 1)); CFG's two halves are
# two evaluations; Best-of-N scores each of its N finished candidates once; SMC with m = 2 resamples
# after step k = 2 only ((4 − k) mod 2 = 0, k > 0) and scores the final samples: 2 potentials per particle.
HAND_COUNTS = [
    (dict(method="unguided"), (4, 0, 0, 0)),
    (dict(method="cfg", cfg_scale=3.0), (8, 0, 0, 0)),
    (CALIBRATED, (4, 4, 4, 0)),
    (dict(CALIBRATED, recurrent_steps=2), (7, 7, 7, 0)),
    (dict(CALIBRATED, recurrent_steps=3), (10, 10, 10, 0)),
    (dict(CALIBRATED, through_denoiser=True), (4, 4, 4, 4)),
    (dict(method="best_of_n", num_candidates=2), (8, 2, 0, 0)),
    (dict(method="best_of_n", num_candidates=4), (16, 4, 0, 0)),
    (dict(method="best_of_n", num_candidates=8), (32, 8, 0, 0)),
    (dict(method="smc", scale=0.5, num_particles=4, resample_every=2), (16, 8, 0, 0)),
    (dict(method="smc", scale=0.5, num_particles=3, resample_every=1), (12, 12, 0, 0)),
]


class TinyDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x, t, y=None):
        return 0.1 * self.conv(x)


def _models():
    torch.manual_seed(0)
    denoiser = CountingNetwork(TinyDenoiser())
    classifier = CountingNetwork(nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)))
    models = DDPMModels(denoiser, GaussianDiffusion.respaced(100, str(T), "linear", "fixed_large"), (1, 4, 4), 3,
                        offshelf=classifier, null_label=3)
    return models, denoiser, classifier


@pytest.mark.parametrize("values, hand", HAND_COUNTS, ids=lambda v: str(v) if isinstance(v, tuple) else v["method"])
def test_counted_work_equals_the_hand_count_and_the_measured_work(values, hand):
    setting = Setting(**values)
    assert ddpm_work(setting, T) == Work(*hand)
    models, denoiser, classifier = _models()
    images = 3
    x, _ = sample_batch(setting, models, [0, 1, 2])
    assert x.shape == (images, 1, 4, 4)
    assert measured_work(denoiser, classifier, images) == Work(*hand)


def test_smc_potentials_per_particle():
    # after steps k > 0 with (T − k) mod m = 0, plus the final sample
    assert [smc_potentials(25, m) for m in (1, 5, 24, 25, 100)] == [25, 5, 2, 1, 1]


def test_the_counter_counts_a_deep_copy_into_the_same_tally():
    import copy

    counter = CountingNetwork(nn.Linear(2, 2))
    copy.deepcopy(counter)(torch.zeros(5, 2, requires_grad=True)).sum().backward()
    assert counter.tally == {"forward": 5, "backward": 5}

"""Issue 11, the cases that only show at run time, through the real entry points (the `offshelf`
command and the stage functions the workflow's jobs call):

* case 1: NaN/inf in a denoiser's output, a classifier's logits or the guided mean stops sampling
  with the setting, the step and the tensor named, and no shard is written;
* case 4: shards that are not what the plan says (other image size, too few samples, other seeds,
  labels outside the classes) are refused, naming the file;
* case 6: a 3-channel shard, or shards of mixed sizes, give one line naming the file.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from offshelf.backbones import digits
from offshelf.backends.digits import DigitsBackend
from offshelf.seeding import draw_labels
from offshelf.shards import load_shards, save_shard
from conftest import train_tiny_digits

OFFSHELF = Path(sys.executable).with_name("offshelf")
GUIDED = "regime=uncond,softplus_beta=3,marginal_temperature=0.5,sine_factor=0.3,scale=3"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return train_tiny_digits(tmp_path_factory.mktemp("digits"), steps=5, batch_size=16)


def poisoned(models, tmp_path, role):
    """A correctly checksummed checkpoint of ``role`` whose first weight is NaN: what a diverged
    training run or an fp16 overflow hands to a sampler."""
    model, config, metrics = digits.load_checkpoint(models[role], role)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    path = tmp_path / f"{role}-nan.pt"
    digits.save_checkpoint(model, config, metrics, path)
    return dict(models, **{role: path})


def sample(files, tmp_path, setting=GUIDED):
    out = tmp_path / "shard.npz"
    args = ["sample", "--backend", "digits", "--sampling", "respacing=5", "--setting", setting, "--seeds", "0:4",
            "--batch-size", "4", "--out", str(out)]
    for role in ("denoiser", "offshelf", "finetuned"):
        args += ["--checkpoint", f"{role}={files[role]}"]
    return subprocess.run([str(OFFSHELF), *args], capture_output=True, text=True, timeout=300), out


@pytest.mark.parametrize("role, tensor", [("denoiser", "denoiser output"), ("offshelf", "classifier logits")])
def test_nan_in_a_network_stops_sampling_naming_setting_step_and_tensor(models, tmp_path, role, tensor):
    proc, out = sample(poisoned(models, tmp_path, role), tmp_path)
    assert proc.returncode == 2, proc.stderr
    message = proc.stderr.strip().splitlines()[-1]  # above it: only the progress bar
    assert proc.stderr.count("error") == 1 and message.startswith("offshelf sample: error: setting ")
    assert "uncond_offshelf-x0_sp3_tj1_tm0.5_g0.3_s3_r1" in message
    assert "step 4" in message and tensor in message and "non-finite" in message
    assert not out.exists() and not out.with_suffix(".png").exists()


def test_an_overflowing_scale_stops_at_the_guided_mean(models, tmp_path):
    """The schema bounds a scale (the command line refuses 1e300 before any work), so the guard
    behind it is reached through the stage function a sample job calls: it stops at the guided mean."""
    from offshelf import stages
    from offshelf.guidance import NonFiniteError
    from offshelf.settings import Setting

    proc, out = sample(models, tmp_path, GUIDED.replace("scale=3", "scale=1e300"))
    assert proc.returncode == 2 and "setting key 'scale' = 1e+300" in proc.stderr and proc.stderr.count("\n") == 1
    assert not out.exists()
    backend = DigitsBackend()
    setting = Setting(regime="uncond", softplus_beta=3, marginal_temperature=0.5, sine_factor=0.3, scale=1e300)
    loaded = backend.load(models, {"respacing": "5", "variance": "fixed_large"}, setting)
    with pytest.raises(NonFiniteError, match="guided mean.*step 4|step 4.*guided mean"):
        stages.sample_shard(backend, loaded, setting, [0, 1, 2, 3], 4)


def test_a_healthy_run_still_writes(models, tmp_path):
    proc, out = sample(models, tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as shard:
        assert shard["arr_0"].shape == (4, 8, 8, 1) and shard["seeds"].tolist() == [0, 1, 2, 3]


def write(path, images, labels, seeds):
    save_shard(path, np.asarray(images, dtype=np.uint8), np.asarray(labels), seeds, 1.0)
    return str(path)


def digits_shard(path, n=32, first=0, labels=None, size=8, channels=1):
    """A shard as the digits sampler writes it: by default the labels its seeds draw."""
    images = np.zeros((n, size, size, channels))
    seeds = range(first, first + n)
    return write(path, images, draw_labels(seeds, 10).numpy() if labels is None else labels, seeds)


@pytest.mark.parametrize("make, expected, message", [
    (lambda p: digits_shard(p, size=16), [[0, 32]], "images are 16x16 with 1 channel(s)"),
    (lambda p: digits_shard(p, channels=3), [[0, 32]], "images are 8x8 with 3 channel(s)"),
    (lambda p: digits_shard(p, n=5), [[0, 32]], "holds 5 samples with seeds 0..4; the plan puts 32 samples"),
    (lambda p: digits_shard(p, first=32), [[0, 32]], "seeds 32..63; the plan puts 32 samples with seeds 0..31"),
    (lambda p: digits_shard(p, labels=np.full(32, 99)), [[0, 32]], "labels span 99..99"),
    (lambda p: digits_shard(p, labels=np.full(32, -1)), [[0, 32]], "labels span -1..-1"),
    # issue 23 case 14: right seeds, labels rolled by one (all in range): not the labels the seeds draw
    (lambda p: digits_shard(p, labels=np.roll(draw_labels(range(32), 10).numpy(), 1)), [[0, 32]],
     "labels are not the ones their seeds draw (offshelf.seeding.draw_labels)"),
])
def test_foreign_shards_are_refused_naming_the_file(tmp_path, make, expected, message):
    path = make(tmp_path / "shard0.npz")
    with pytest.raises(ValueError) as err:
        load_shards(DigitsBackend(), [path], expected)
    assert str(err.value).startswith(path) and message in str(err.value), str(err.value)
    assert "to recover, delete this shard and rerun" in str(err.value)  # issue 23 case 15c


def test_mixed_sizes_name_the_odd_file(tmp_path):
    good = digits_shard(tmp_path / "shard0.npz")
    odd = write(tmp_path / "shard1.npz", np.zeros((32, 16, 16, 1)), draw_labels(range(32, 64), 10).numpy(),
                range(32, 64))
    with pytest.raises(ValueError, match=f"^{odd}: images are 16x16"):
        load_shards(DigitsBackend(), [good, odd], [[0, 32], [32, 32]])
    images, labels, _ = load_shards(DigitsBackend(), [good], [[0, 32]])  # the plan's own shard passes
    assert images.shape == (32, 8, 8, 1) and labels.tolist() == draw_labels(range(32), 10).tolist()


def test_offshelf_evaluate_names_a_foreign_shard(models, tmp_path):
    odd = digits_shard(tmp_path / "odd.npz", channels=3)
    proc = subprocess.run([str(OFFSHELF), "evaluate", "--backend", "digits", "--checkpoint",
                           f"evaluator={models['evaluator']}", "--shards", odd, "--out", str(tmp_path / "m.json")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert odd in proc.stderr and "3 channel(s)" in proc.stderr
    assert not (tmp_path / "m.json").exists()


def test_offshelf_evaluate_refuses_labels_its_seeds_do_not_draw(models, tmp_path):
    """Issue 23 case 14 through the command: a shard with the right seeds and in-range labels
    rolled by one is refused in one line naming the file and how to recover; nothing is written
    (no metrics, no features, no reference features: case 15b)."""
    rolled = digits_shard(tmp_path / "rolled.npz", labels=np.roll(draw_labels(range(32), 10).numpy(), 1))
    out = tmp_path / "out" / "m.json"
    out.parent.mkdir()
    proc = subprocess.run([str(OFFSHELF), "evaluate", "--backend", "digits", "--checkpoint",
                           f"evaluator={models['evaluator']}", "--shards", rolled, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert rolled in proc.stderr and "not the ones their seeds draw" in proc.stderr and "to recover" in proc.stderr
    assert list(out.parent.iterdir()) == []


def test_a_broken_candidate_cannot_win_the_grid():
    """Best-of-grid would otherwise pick a finite scale and hide the broken one."""
    from offshelf.planning.rows import Row
    from offshelf.settings import Setting
    from offshelf.tables import best_candidate, table_frame

    good, broken = Setting(scale=1.0), Setting(scale=3.0)
    row = Row(table="table4", label="Softplus", regime="cond", candidates=[good, broken], probe=None, sweep_key="scale")
    with pytest.raises(ValueError, match=f"setting {broken.name} has FID nan"):
        table_frame([row], {good.name: {"fid": 0.3}, broken.name: {"fid": float("nan")}}, {})
    assert best_candidate(row, {good.name: {"fid": 0.3}})[0] == good  # a candidate not yet run is no error

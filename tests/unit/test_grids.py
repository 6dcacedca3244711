"""Sample grids (offshelf.grids) on synthetic shards: one line per class, the same seeds in every
setting's grid, enlarged tiles, white gutters, empty tiles where a class runs short; and the
report's Samples section built from them."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml

from offshelf import backends
from offshelf.config import ConfigError, validate_config
from offshelf.grids import (BACKGROUND, GUTTER, GridConfigError, GridSources, class_grid, grid_options, read_layout,
                            shards_by_setting, upscale_factor, write_sample_grid)
from offshelf.seeding import draw_labels
from offshelf.shards import ShardFormat, save_shard
from workflow_utils import REPO

DIGITS = backends.create({"name": "digits", "options": {}})  # 8x8 grey images, 10 classes


def fake_shards(folder, setting_offset: int, seeds=range(64), shard_size=32):
    """Shards as the sample job writes them: labels drawn from the seeds (the backends' rule),
    image of seed s a flat grey level (s + setting_offset) % 256, so a tile tells its seed."""
    paths, ranges = [], []
    for start in range(seeds[0], seeds[-1] + 1, shard_size):
        batch = list(range(start, min(start + shard_size, seeds[-1] + 1)))
        images = np.stack([np.full((8, 8, 1), (s + setting_offset) % 256, np.uint8) for s in batch])
        path = folder / f"shard{len(paths)}.npz"
        save_shard(path, images, draw_labels(batch, 10).numpy(), batch, 1.0)
        paths.append(str(path))
        ranges.append([batch[0], len(batch)])
    return paths, ranges


def tile(grid, row, col, size):
    top, left = GUTTER + row * (size + GUTTER), GUTTER + col * (size + GUTTER)
    return grid[top:top + size, left:left + size]


def test_labels_are_a_function_of_the_seed_alone():
    """What makes lines of two grids hold the same seeds: a seed's class ignores its batch."""
    whole = draw_labels(range(100), 1000)
    assert whole[37] == draw_labels([37], 1000)[0] == draw_labels([99, 37, 5], 1000)[1]


def test_grid_lines_are_classes_and_tiles_are_their_first_seeds(tmp_path):
    paths, ranges = fake_shards(tmp_path, setting_offset=0)
    out = tmp_path / "grid.png"
    layout = write_sample_grid(DIGITS, paths, ranges, {"per_class": 2, "classes": [3, 0, 7]}, out, "a")
    labels = draw_labels(range(64), 10).tolist()
    assert layout["classes"] == [3, 0, 7]
    for c, line in zip([3, 0, 7], layout["seeds"]):
        assert line == [s for s in range(64) if labels[s] == c][:2]  # the first two seeds of class c
    from PIL import Image

    grid = np.asarray(Image.open(out))
    size = 8 * upscale_factor(8, 8)  # 8x8 digits enlarged to 64 px
    assert size == 64 and grid.shape == (3 * (size + GUTTER) + GUTTER, 2 * (size + GUTTER) + GUTTER, 3)
    for r, line in enumerate(layout["seeds"]):
        for col, seed in enumerate(line):
            assert (tile(grid, r, col, size) == seed).all(), (r, col, seed)  # grey level = seed: the right image
    gutters = np.ones(grid.shape[:2], bool)
    for r in range(3):
        for col in range(2):
            top, left = GUTTER + r * (size + GUTTER), GUTTER + col * (size + GUTTER)
            gutters[top:top + size, left:left + size] = False
    assert (grid[gutters] == BACKGROUND).all()
    assert read_layout(out) == layout


def test_the_report_draws_each_settings_grid_from_its_leading_shards(tmp_path):
    """No grid job: the report draws each grid from the shard files it is given, grouped by their
    setting's folder in shard order, with the seeds each shard must hold; the same PNG, byte for
    byte, as drawing it from those shards directly. A gap in the leading shards is refused."""
    paths, ranges = fake_shards(tmp_path / "samples" / "s_one", 0)
    other, _ = fake_shards(tmp_path / "samples" / "s_two", 100, seeds=range(32))
    grouped = shards_by_setting([paths[1], other[0], paths[0]])
    assert grouped == {"s_one": paths, "s_two": other}
    sources = GridSources(ShardFormat.of(DIGITS), grouped, ranges, {"per_class": 2})
    layout = sources.write("s_one", tmp_path / "drawn.png")
    direct = write_sample_grid(DIGITS, paths, ranges, {"per_class": 2}, tmp_path / "direct.png", "s_one")
    assert layout == direct and layout["shards"] == 2
    assert (tmp_path / "drawn.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    assert sources.write("s_two", tmp_path / "two.png")["shards"] == 1  # the seeds of shard 0 only
    with pytest.raises(ValueError, match=r"setting s_one: a grid reads its leading shards, got shards \[1\]"):
        shards_by_setting([paths[1]])
    with pytest.raises(ValueError, match="not a shard file"):
        shards_by_setting([tmp_path / "s_one" / "grid.png"])
    wrong = GridSources(ShardFormat.of(DIGITS), grouped, [[1000, 32], [1032, 32]], {"per_class": 2})
    with pytest.raises(ValueError, match="seed"):  # the shards must hold the plan's seeds, as the evaluation checks
        wrong.write("s_one", tmp_path / "wrong.png")


def test_shards_of_another_backend_stop_the_grid(tmp_path):
    """The ShardFormat checks what the backend itself checked: image shape and classes, naming both."""
    paths, ranges = fake_shards(tmp_path, 0)
    with pytest.raises(ValueError, match=r"shard0\.npz: images are 8x8 with 1 channel\(s\).*backend 'rgb' writes HWC \(8, 8, 3\)"):
        write_sample_grid(ShardFormat("rgb", (3, 8, 8), 10), paths, ranges, {}, tmp_path / "a.png", "a")
    with pytest.raises(ValueError, match=r"labels span 0\.\.9; backend 'few' has classes 0\.\.4"):
        write_sample_grid(ShardFormat("few", (1, 8, 8), 5), paths, ranges, {"classes": [0]}, tmp_path / "a.png", "a")


def test_two_settings_show_the_same_seeds_per_line(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    grids = {"per_class": 3, "classes": list(range(10)), "shards": 2}
    a = write_sample_grid(DIGITS, *fake_shards(tmp_path / "a", 0), grids, tmp_path / "a.png", "a")
    b = write_sample_grid(DIGITS, *fake_shards(tmp_path / "b", 100), grids, tmp_path / "b.png", "b")
    assert a["seeds"] == b["seeds"] and a["missing"] == b["missing"] == 0
    from PIL import Image

    ga, gb = np.asarray(Image.open(tmp_path / "a.png")), np.asarray(Image.open(tmp_path / "b.png"))
    assert ga.shape == gb.shape
    for r, line in enumerate(a["seeds"]):
        for col, seed in enumerate(line):  # same place, same seed, each setting's own image
            assert (tile(ga, r, col, 64) == seed).all() and (tile(gb, r, col, 64) == seed + 100).all()


def test_a_class_short_of_samples_gets_empty_tiles(tmp_path):
    seeds = list(range(20))
    labels = draw_labels(seeds, 10).tolist()
    count = labels.count(4)
    images = np.zeros((20, 8, 8, 1), np.uint8)
    grid, lines = class_grid(images, labels, seeds, [4], per_class=count + 2)
    assert lines == [[s for s in seeds if labels[s] == 4] + [None, None]]
    for col in range(count, count + 2):
        assert (tile(grid, 0, col, 64) == BACKGROUND).all()
    assert (tile(grid, 0, 0, 64) == 0).all()


def test_seeds_are_taken_in_ascending_order_whatever_the_sample_order():
    seeds = np.arange(30)
    labels = draw_labels(seeds.tolist(), 3).numpy()
    order = np.random.default_rng(0).permutation(30)
    images = np.zeros((30, 4, 4, 3), np.uint8)
    _, forward = class_grid(images, labels, seeds, [0, 1, 2], 4)
    _, shuffled = class_grid(images[order], labels[order], seeds[order], [0, 1, 2], 4)
    assert forward == shuffled


def test_large_images_are_not_enlarged():
    assert upscale_factor(128, 128) == upscale_factor(64, 64) == 1 and upscale_factor(8, 8) == 8


@pytest.mark.parametrize("grids, num_classes, match", [
    ({"classes": [3, 12]}, 10, r"grids\.classes: \[12\] outside .* 0\.\.9"),
    ({"per_class": 4}, 1000, r"grids\.classes: the backend has 1000 classes"),
])
def test_bad_grid_options_name_the_key(grids, num_classes, match):
    with pytest.raises(GridConfigError, match=match):
        grid_options(grids, num_classes)


def test_grid_options_default_to_every_class_of_a_small_backend():
    assert grid_options({}, 10) == {"per_class": 8, "shards": 1, "classes": list(range(10))}


@pytest.mark.parametrize("grids, match", [
    ({"per_class": 0}, r"grids\.per_class"),
    ({"classes": [1, 1]}, r"grids\.classes"),
    ({"colums": 3}, r"\['colums'\].*per_class"),
])
def test_schema_checks_the_grids_section(grids, match):
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "ci.yaml").read_text()))
    config["grids"] = grids
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_report_samples_show_each_rows_reported_grid_or_its_reason(tmp_path):
    from offshelf.report import _samples_section

    shards = {}
    for name, offset in (("s_one", 0), ("s_two", 100)):
        paths, ranges = fake_shards(tmp_path / "samples" / name, offset)
        shards[name] = paths[:1]
    grids = GridSources(ShardFormat.of(DIGITS), shards, ranges[:1], {"per_class": 2})
    frame = pd.DataFrame([
        {"row": "first", "regime": "cond", "status": "ok", "setting": "s_one"},
        {"row": "first", "regime": "uncond", "status": "ok", "setting": "s_two"},
        {"row": "second", "regime": "cond", "status": "not run (no CFG model)"},
        {"row": "second", "regime": "uncond", "status": "ok", "setting": "s_one"},
    ])
    report_dir = tmp_path / "report"
    text = "\n".join(_samples_section("table7", frame, grids, report_dir / "samples", report_dir, {}))
    assert "| first | ![first, cond](samples/table7/01-cond.png) | ![first, uncond](samples/table7/01-uncond.png) |" \
        in text
    assert "| second | not run (no CFG model) | ![second, uncond](samples/table7/02-uncond.png) |" in text
    assert "one line per class (0, 1, 2, 3, 4, 5, 6, 7, 8, 9), the first 2 seeds of each class" in text
    write_sample_grid(DIGITS, shards["s_two"], ranges[:1], {"per_class": 2}, tmp_path / "s_two.png", "s_two")
    samples = report_dir / "samples" / "table7"
    assert (samples / "01-uncond.png").read_bytes() == (tmp_path / "s_two.png").read_bytes()
    assert (samples / "02-uncond.png").read_bytes() == (samples / "01-cond.png").read_bytes()  # s_one, drawn once
    assert not (samples / "02-cond.png").exists()
    with pytest.raises(ValueError, match=r"table7 / first / cond: reports setting s_one, whose shards"):
        _samples_section("table7", frame, GridSources(ShardFormat.of(DIGITS), {"s_two": shards["s_two"]}, ranges[:1],
                                                      {"per_class": 2}), report_dir / "samples", report_dir, {})


def test_a_grid_reads_only_the_leading_shards_it_needs():
    from offshelf.config import load_config
    from offshelf.grids import grid_shards
    from offshelf.planning.plan import build_plan
    from offshelf.planning.searches import search_round_record

    ci = load_config(REPO / "config" / "ci.yaml")
    ci["sampling"]["shard_size"] = 32  # two shards per setting
    plan = build_plan(ci)

    def shards(config, name, rounds=()):
        return grid_shards(config, plan.sampled_counts(name, rounds), name)

    assert ci["grids"]["shards"] == 1 and shards(ci, "cond_unguided") == [0]  # of 2 sampled
    ci["grids"]["shards"] = 5
    assert shards(ci, "cond_unguided") == [0, 1]  # never more than the setting samples
    round0 = search_round_record(next(iter(plan.searches.values())), None, {})
    searched = next(iter(round0["settings"]))  # a scale a search proposes (its round's record names it)
    assert shards(ci, searched, [round0]) == [0, 1]  # its grid is made once it is a finalist: sampled in full
    ddpm = load_config(REPO / "config" / "imagenet128_ddpm.yaml")
    ddpm_plan = build_plan(ddpm)
    for name in ddpm_plan.settings:  # 10 of the 10 (ablations) or 50 (Table 7) shards a setting samples
        assert grid_shards(ddpm, ddpm_plan.sampled_counts(name), name) == list(range(10)), name
    with pytest.raises(ValueError, match="no table row samples setting 'cond_nothing'"):
        shards(ci, "cond_nothing", [round0])

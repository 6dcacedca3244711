"""Held-out ImageNet images for offshelf tune (offshelf.held_out, `offshelf held-out`): ADM's
center crop, the ImageFolder class order, and the backend reading the file its config names."""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from offshelf.held_out import HeldOutError, center_crop_adm, images_from_folder


def test_center_crop_halves_by_box_then_crops_the_centre():
    """512x256 image, black | white (x 128…383) | black: BOX halving to 256x128 (exact on uniform
    blocks), no further resize, centre crop x 64…191 = the original white band: all 255."""
    array = np.zeros((256, 512, 3), np.uint8)
    array[:, 128:384] = 255
    out = center_crop_adm(Image.fromarray(array), 128)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8 and (out == 255).all()
    # a non-square grey image: RGB out, short side scaled to the target (BICUBIC of a constant is exact)
    grey = center_crop_adm(Image.fromarray(np.full((90, 150), 77, np.uint8), mode="L"), 64)
    assert grey.shape == (64, 64, 3) and (grey == 77).all()


def image_folder(root, counts: dict[int, int], num_classes: int = 1000):
    """An ImageFolder tree of ``num_classes`` synset-like folders; class k holds counts[k] images
    whose pixels all equal k % 251 + 1 (so each image says which class it came from)."""
    for k in range(num_classes):
        folder = root / f"n{k:08d}"
        folder.mkdir(parents=True)
        for i in range(counts.get(k, 0)):
            Image.fromarray(np.full((40, 60, 3), k % 251 + 1, np.uint8)).save(folder / f"img_{i}.png")
    return root


def test_images_are_taken_round_robin_in_sorted_class_order(tmp_path):
    root = image_folder(tmp_path / "val", {0: 2, 1: 1, 999: 1})
    images, labels = images_from_folder(root, 32, 4)
    assert labels.tolist() == [0, 1, 999, 0]
    assert images.shape == (4, 32, 32, 3) and [int(im[0, 0, 0]) for im in images] == [1, 2, 999 % 251 + 1, 1]


def test_folder_errors_name_the_folder_or_file(tmp_path):
    few = image_folder(tmp_path / "few", {0: 1}, num_classes=999)
    with pytest.raises(HeldOutError, match="999 class folders, expected 1000"):
        images_from_folder(few, 32, 1)
    root = image_folder(tmp_path / "val", {3: 1})
    with pytest.raises(HeldOutError, match="1 images in its class folders, 2 asked for"):
        images_from_folder(root, 32, 2)
    (root / "n00000005" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(HeldOutError, match="broken.jpg: not a readable image"):
        images_from_folder(root, 32, 2)


def test_cli_file_is_what_the_adm_backend_reads(tmp_path):
    from offshelf.backends import create
    from offshelf.backends.capabilities import UnsupportedError

    root = image_folder(tmp_path / "val", {0: 1, 7: 2})
    out = tmp_path / "held_out_128.npz"
    proc = subprocess.run([sys.executable, "-m", "offshelf.cli", "held-out", "--folder", str(root), "--resolution",
                           "128", "--count", "3", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "3 images of 2 classes at 128x128" in proc.stdout

    backend = create({"name": "adm128", "options": {"imagenet": {"classifier": "resnet50", "held_out": str(out)}}})
    x, y = backend.held_out_images(2)
    assert x.shape == (2, 3, 128, 128) and y.tolist() == [0, 7]
    assert torch.allclose(x[0], torch.full_like(x[0], 1 / 127.5 - 1)) and x.dtype == torch.float32

    small = tmp_path / "held_out_64.npz"
    subprocess.run([sys.executable, "-m", "offshelf.cli", "held-out", "--folder", str(root), "--resolution", "64",
                    "--count", "1", "--out", str(small)], check=True, capture_output=True, timeout=300)
    wrong = create({"name": "adm128", "options": {"imagenet": {"classifier": "resnet50", "held_out": str(small)}}})
    with pytest.raises(HeldOutError, match=r"'imagenet\.held_out'.*64x64x3 images, this backbone samples 128x128x3"):
        wrong.held_out_images()
    unset = create({"name": "adm128", "options": {"imagenet": {"classifier": "resnet50"}}})
    with pytest.raises(UnsupportedError, match=r"config key 'imagenet\.held_out' is not set.*--resolution 128"):
        unset.held_out_images()


def test_cli_bad_folder_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "offshelf.cli", "held-out", "--folder", str(tmp_path / "nope"),
                           "--resolution", "64", "--out", str(tmp_path / "x.npz")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "offshelf held-out: error:" in proc.stderr and "not a folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_tune_refuses_models_that_are_not_pixel_ddpm(tmp_path):
    """EDM (σ-parameterised) and DiT (latent) models have a denoiser too; Stage 1 would noise
    pixels in the wrong space, so run_tune stops before any work."""
    from offshelf.backends.digits import DigitsBackend
    from offshelf.tuning import TuneError, TuneSpec, run_tune

    latent = SimpleNamespace(denoiser=torch.nn.Identity(), diffusion=None, vae=None)
    with pytest.raises(TuneError, match="pixel-space DDPM-family backend.*SimpleNamespace"):
        run_tune(DigitsBackend(), latent, TuneSpec(), tmp_path, {}, {})

"""The uint8 conventions of offshelf.images, byte for byte, on hand-picked values.

A one-level shift on half of all pixels moves FID by the size of the gaps between the paper's rows,
so each backend must write exactly the bytes its original implementation writes. The expected
bytes below are derived by hand (fp32 arithmetic; every intermediate is shown) and each column is
chosen so that a neighbouring convention gives a different byte:

=========  ==============  ================  ==============  =======  =======  =======
x (fp32)   127.5·x + 128   (x + 1)·127.5     DiT/EDM: trunc  ADM      round    DiT rounded
=========  ==============  ================  ==============  =======  =======  =======
-1.2       -25             -25.5             0 (clamp)       0        0        0
-1         0.5             0                 0               0        0        0 (half-even)
-0.996     1.01            0.51              1               **0**    1        1
-0.4       77              76.5 (exact tie)  77              76       **76**   77
0          128             127.5 (tie)       128             **127**  128      128
0.4        179             178.5 (exact tie) 179             178      **178**  179
0.5        191.75          191.25            191             191      191      **192**
1          255.5           255               255 (clamp)     255      255      255
1.2        281             280.5             255 (clamp)     255      255      255
=========  ==============  ================  ==============  =======  =======  =======

DiT's convention agrees with rounding ``(x + 1)·127.5`` half *up*; it differs from the digits
benchmark's ``round`` (half to even, torch's rule) exactly at the ties x = ±0.4 (fp32), which is
why they are in the table.
"""

import numpy as np
import pytest
import torch

from offshelf.backends.adm128 import ADM128Backend
from offshelf.backends.digits import DigitsBackend
from offshelf.backends.dit256 import DiT256Backend
from offshelf.backends.edm64 import EDM64Backend
from offshelf.images import from_uint8_nhwc, to_uint8_nhwc

VALUES = [-1.2, -1.0, -0.996, -0.4, 0.0, 0.4, 0.5, 1.0, 1.2]
#: DiT sample.py / NVlabs edm generate.py: torch.clamp(127.5 * x + 128.0, 0, 255).to(uint8) (truncation)
DIT_BYTES = [0, 0, 1, 77, 128, 179, 191, 255, 255]
#: guided-diffusion classifier_sample.py: ((x + 1) * 127.5).clamp(0, 255).to(uint8) (truncation)
ADM_BYTES = [0, 0, 0, 76, 127, 178, 191, 255, 255]
#: the digits benchmark: round((x + 1) * 127.5), ties to even
ROUND_BYTES = [0, 0, 1, 76, 128, 178, 191, 255, 255]


def images(values, channels=3):
    """One NCHW image whose pixels are ``values`` (a 1×N row), the same in every channel."""
    return torch.tensor(values, dtype=torch.float32).view(1, 1, 1, -1).repeat(1, channels, 1, 1)


def stored_row(stored: np.ndarray) -> list[int]:
    assert stored.dtype == np.uint8 and stored.shape[0] == 1 and stored.shape[1] == 1
    assert (stored == stored[..., :1]).all()  # every channel converted alike
    return stored[0, 0, :, 0].tolist()


def test_hand_picked_values_are_exact_in_fp32():
    """The table's intermediates, as torch computes them in fp32 (the ties are exact ties)."""
    x = images(VALUES, channels=1).flatten()
    assert (x * 127.5 + 128).tolist() == pytest.approx([-25, 0.5, 1.01, 77, 128, 179, 191.75, 255.5, 281], abs=1e-4)
    assert ((x + 1) * 127.5)[[3, 4, 5]].tolist() == [76.5, 127.5, 178.5]
    assert (x * 127.5 + 128)[[3, 5]].tolist() == [77.0, 179.0]


def test_dit_backend_writes_what_dit_sample_py_writes():
    """DiT sample.py: ``torch.clamp(127.5 * samples + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8)``."""
    x = images(VALUES)
    stored = DiT256Backend({"imagenet": {"device": "cpu"}}).to_uint8(x)
    assert stored.shape == (1, 1, len(VALUES), 3)
    assert stored_row(stored) == DIT_BYTES
    # DiT's own expression, written out: the backend is that expression, not a look-alike
    official = torch.clamp(127.5 * x + 128.0, 0, 255).permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()
    np.testing.assert_array_equal(stored, official)


@pytest.mark.parametrize("wrong, expected, where", [
    ("adm", ADM_BYTES, "ADM's truncation of (x+1)·127.5 is one level lower at x = -0.996, -0.4, 0, 0.4"),
    ("round", ROUND_BYTES, "rounding half to even is one level lower at the ties x = ±0.4"),
])
def test_dit_bytes_differ_from_the_other_conventions(wrong, expected, where):
    got = stored_row(to_uint8_nhwc(images(VALUES), wrong))
    assert got == expected, where
    assert got != DIT_BYTES, where


def test_rounding_dits_own_expression_would_be_caught():
    """Had DiT rounded 127.5·x + 128 instead of truncating, x = 0.5 would be stored as 192, not 191."""
    x = images(VALUES)
    rounded = torch.clamp((127.5 * x + 128.0).round(), 0, 255).to(torch.uint8)[0, 0, 0].tolist()
    assert rounded[VALUES.index(0.5)] == 192 and DIT_BYTES[VALUES.index(0.5)] == 191
    assert rounded != DIT_BYTES


def test_every_backend_names_its_originals_convention():
    x = images(VALUES)
    imagenet = {"imagenet": {"device": "cpu"}}
    assert stored_row(ADM128Backend(imagenet).to_uint8(x)) == ADM_BYTES
    assert stored_row(EDM64Backend(imagenet).to_uint8(x)) == DIT_BYTES  # NVlabs edm: (x·127.5 + 128).clip(0, 255)
    assert stored_row(DigitsBackend().to_uint8(x)) == ROUND_BYTES


def test_round_trip_stays_within_one_level():
    """Reading back (v/127.5 − 1) is within one level of the input for in-range values, every convention."""
    inside = [v for v in VALUES if -1 <= v <= 1]
    for convention in ("adm", "edm", "round"):
        back = from_uint8_nhwc(to_uint8_nhwc(images(inside), convention))
        assert (back - images(inside)).abs().max() <= 1 / 127.5 + 1e-6, convention


def test_unknown_convention_is_named():
    with pytest.raises(ValueError, match=r"uint8 convention must be one of adm, edm, round, got 'dit'"):
        to_uint8_nhwc(images(VALUES), "dit")

"""Per-sample random streams: sample ``i`` of a run draws all its randomness from seed ``i``,
so any shard (a seed range) reproduces alone, bitwise on the same hardware and batch size."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class StackedRandomGenerator:
    """One ``torch.Generator`` per sample; ``randn``/``randint`` stack one draw per sample
    (the pattern of NVlabs/edm's ``generate.py``)."""

    def __init__(self, seeds: Sequence[int], device: str | torch.device = "cpu", seed_bits: int = 63):
        # seed_bits=32 is NVlabs' generate.py (``int(seed) % (1 << 32)``): the same image for a seed
        # of 2**32 or more as the official script; both agree below that
        self.device = torch.device(device)
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator(self.device).manual_seed(s % (1 << seed_bits)) for s in self.seeds]

    def __len__(self) -> int:
        return len(self.generators)

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[len(seeds), *shape]`` standard normal in ``dtype``, row i from generator i.

        A float64 draw is not a float32 draw cast up: torch samples each dtype differently from
        the same generator state, so the dtype is part of which numbers a seed gives. float32 is
        NVlabs' initial latents (``rnd.randn([...], device=device)``, cast to float64 afterwards)
        and every float32 trajectory (DDPM, DiT)."""
        # each row drawn in place: the numbers torch.randn(shape, generator=g) gives, without a stack's copy
        out = torch.empty((len(self.generators), *shape), device=self.device, dtype=dtype)
        for row, g in zip(out, self.generators):
            torch.randn(tuple(shape), generator=g, device=self.device, dtype=dtype, out=row)
        return out

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        """Standard normal shaped like ``x``, drawn in ``x.dtype`` (NVlabs' ``randn_like`` passes
        ``dtype=input.dtype``): EDM's churn noise along its float64 trajectory is then the official
        script's for the same seed. It used to be drawn in float32 and cast, which left float32
        callers (DDPM, DiT, tuning) unchanged but gave EDM's stochastic sampler other images than
        NVlabs' (18 steps, S_churn 40: max |Δ| 3.1 against tests/fixtures/edm_churn_golden.pt)."""
        if x.shape[0] != len(self):
            raise ValueError(f"batch of {x.shape[0]} but {len(self)} per-sample generators")
        return self.randn(x.shape[1:], dtype=x.dtype)

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, (), generator=g, device=self.device) for g in self.generators])


# The entropy that tags the label stream (ASCII "label"), beside each sample's seed.
LABEL_STREAM = 0x6C6162656C


def draw_labels(seeds: Sequence[int], num_classes: int) -> torch.Tensor:
    """The class of sample ``seed``: drawn from a stream of its own, independent of its noise.
    Not a torch CPU generator seeded with an offset (the old ``s + 2**40``): that generator keeps
    only the seed's low 32 bits (mt19937), so it *was* sample s's noise stream and the label a
    function of the noise's first draw. NumPy's SeedSequence hashes all of (tag, seed)."""
    return torch.tensor([int(np.random.default_rng([LABEL_STREAM, int(s)]).integers(num_classes)) for s in seeds],
                        dtype=torch.long)

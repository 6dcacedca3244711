"""torch.compile (inductor) against eager fp32 on the tiny goldens of tests/unit/test_levers.py
(ADM, EDM, DiT): the maximum difference of the final guided samples after the whole loop (bound
1e-5) and the wall time, compile included. CI checks only the smallest case (digits, marked slow):
compiling on a CPU takes minutes of C++ code generation.

    python benchmarks/compile_equivalence.py            # from the repository root
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "unit")]

import test_levers as cases  # noqa: E402  (the fixtures the tests compare, not a copy of them)


def main() -> int:
    torch.set_num_threads(1)
    reference = ROOT / "tests" / "fixtures" / "reference"
    for make in (lambda: cases.edm_case(reference), cases.dit_case, lambda: cases.adm_case(reference)):
        case = make()
        eager = case.run(cases.EAGER)
        start = time.perf_counter()
        difference = cases.max_difference(case.run(cases.Levers(compile_mode="default")), eager)
        print(f"{case.name}: compile max difference {difference:.3g} (bound {cases.FP32_REORDER_TOLERANCE:g}), "
              f"{time.perf_counter() - start:.0f} s wall", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

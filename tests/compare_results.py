"""Whether two results folders hold the same outputs, ignoring only what differs between any two
runs: wall-clock seconds, the folder's own path inside recorded paths, logs and zip timestamps.

    python tests/compare_results.py RESULTS_A RESULTS_B        # exit 0 when the same; else lists files

Shards and features (.npz) compare array by array, bitwise (but a shard's `seconds`); metrics and search records (.json)
value by value with every `seconds` key dropped; tables (.csv) cell by cell without their `seconds`
column; checkpoints (.pt) tensor by tensor, without their training's wall time; anything else byte
for byte. `--ignore KEY` sets aside one more JSON key (e.g. `judge` against a run made before the
judge's name hashed its weights alone). Used by the SLURM test
(a run on the cluster equals the local run) and to show a refactor leaves config/ci.yaml's outputs
unchanged.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np

TIMING_KEYS = {"seconds", "train_seconds", "compile_seconds"}
SKIPPED_SUFFIXES = {".log"}
SKIPPED_PARTS = {"logs", ".snakemake"}


def _strip(value, root: str):
    if isinstance(value, dict):
        return {k: _strip(v, root) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_strip(v, root) for v in value]
    if isinstance(value, str):
        return value.replace(root, "<results>")
    return value


def _same_npz(a: Path, b: Path) -> str | None:
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        if sorted(x.files) != sorted(y.files):
            return f"arrays {sorted(x.files)} vs {sorted(y.files)}"
        for name in set(x.files) - TIMING_KEYS:  # a shard records its sampling's wall time
            if x[name].dtype != y[name].dtype or not np.array_equal(x[name], y[name], equal_nan=x[name].dtype.kind == "f"):
                return f"array {name!r} differs"
    return None


def _same_csv(a: Path, b: Path) -> str | None:
    import pandas as pd

    x, y = (pd.read_csv(p).drop(columns=list(TIMING_KEYS), errors="ignore") for p in (a, b))
    try:
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    except AssertionError as err:
        return str(err).splitlines()[0]
    return None


def _same_pt(a: Path, b: Path) -> str | None:
    import torch

    def flat(obj, prefix=""):
        if isinstance(obj, dict):
            for k, v in obj.items():
                yield from flat(v, f"{prefix}{k}.")
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                yield from flat(v, f"{prefix}{i}.")
        else:
            yield prefix, obj

    x = dict(flat(torch.load(io.BytesIO(a.read_bytes()), map_location="cpu", weights_only=False)))
    y = dict(flat(torch.load(io.BytesIO(b.read_bytes()), map_location="cpu", weights_only=False)))
    if x.keys() != y.keys():
        return "different entries"
    for key, value in x.items():
        other = y[key]
        if isinstance(value, torch.Tensor):
            if not (isinstance(other, torch.Tensor) and value.dtype == other.dtype and torch.equal(value, other)):
                return f"tensor {key!r} differs"
        # a checkpoint's sha256 digests its metrics too (train_seconds): what it covers is compared above
        elif key.rstrip(".").split(".")[-1] not in TIMING_KEYS | {"sha256"} and value != other:
            return f"{key!r}: {value!r} vs {other!r}"
    return None


def difference(a: Path, b: Path, root_a: Path, root_b: Path) -> str | None:
    """Why file ``a`` (under results ``root_a``) is not the same output as ``b``, or None."""
    suffix = "".join(a.suffixes[-1:])
    if suffix == ".npz":
        return _same_npz(a, b)
    if suffix == ".json":
        x, y = _strip(json.loads(a.read_text()), str(root_a)), _strip(json.loads(b.read_text()), str(root_b))
        return None if x == y else "values differ"
    if suffix == ".csv":
        return _same_csv(a, b)
    if suffix == ".pt":
        return _same_pt(a, b)
    if suffix in {".md", ".yaml", ".txt"}:
        x, y = a.read_text().replace(str(root_a), "<results>"), b.read_text().replace(str(root_b), "<results>")
        return None if x == y else "text differs"
    return None if a.read_bytes() == b.read_bytes() else "bytes differ"


def outputs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and p.suffix not in SKIPPED_SUFFIXES and not SKIPPED_PARTS & set(p.relative_to(root).parts)}


def compare(root_a: Path, root_b: Path, only: set[str] | None = None) -> list[str]:
    """Every difference between two results folders (files present in one only, or not the same);
    ``only`` restricts it to these relative paths (which both must hold)."""
    root_a, root_b = Path(root_a).resolve(), Path(root_b).resolve()
    files_a, files_b = outputs(root_a), outputs(root_b)
    if only is not None:
        missing = [f"{f}: missing in {root}" for f in sorted(only) for root, files in ((root_a, files_a), (root_b, files_b))
                   if f not in files]
        files_a = files_b = set(only) - {m.split(":")[0] for m in missing}
    else:
        missing = [f"{f}: only in {root_a}" for f in sorted(files_a - files_b)]
        missing += [f"{f}: only in {root_b}" for f in sorted(files_b - files_a)]
    found = []
    for name in sorted(files_a & files_b):
        why = difference(root_a / name, root_b / name, root_a, root_b)
        if why:
            found.append(f"{name}: {why}")
    return missing + found


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="compare_results.py", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs=2, type=Path)
    parser.add_argument("--ignore", action="append", default=[], metavar="KEY", help="a JSON key to set aside")
    args = parser.parse_args(argv)
    TIMING_KEYS.update(args.ignore)
    argv = args.results
    found = compare(argv[0], argv[1])
    for line in found:
        print(line)
    count = len(outputs(Path(argv[0])))
    print(f"{count} outputs compared: {'the same' if not found else f'{len(found)} differ'}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

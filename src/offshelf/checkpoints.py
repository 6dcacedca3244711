"""Checkpoint registry and verified, resumable downloads.

Every file the paper uses has a name here. ``fetch(name)`` returns a local path whose bytes are
verified: against the sha256 (and size) pinned in the registry, the hash prefix torchvision/torch.hub
put in file names (``resnet50-11ad3fa6.pth``: the first hex digits of the file's sha256), and the
lock file, which records ``sha256`` and ``size`` at first download for every file whose full hash
is not published, so later uses (and other machines) get exactly the same bytes.

Verification policy (multi-GB files; full reasoning in docs/checkpoints.md):

* Downloaded bytes are hashed in full as they stream in; nothing unverified enters the cache.
* ``fetch(name)`` of a file already in the cache (the workflow's fetch job, the command line)
  re-hashes it in full: that is the scrub that catches what no metadata shows (bit rot, writes
  below the file system).
* Everywhere else (``fetch(..., local_path=)``, :func:`verify`, :func:`file_sha256`: every
  sampling job) a digest is reused from a record keyed by the file's (device, inode, size,
  mtime_ns, ctime_ns). ``os.utime`` (hence ``cp -p``, ``rsync -t``, ``touch -d``) can set atime
  and mtime to anything, but the kernel stamps ctime with the current time on every utime, write,
  truncate, chmod and rename; no system call sets ctime to a chosen value. Forging the key takes
  root changing the system clock, or writing the block device under the file system, and bytes
  changed under the file system (bit rot) leave every stamp alone: only a full re-hash sees those.
* A record is kept only when the file's ctime lies :data:`RACY_NS` or more before hashing began
  (git's "racily clean" rule): a write landing in the same timestamp tick as the hash would leave
  ctime unchanged, so a just-written file is hashed again on its next use.
* Records live in offshelf's own cache folder (``<cache>/.verified/``), never beside the file:
  verifying a user's ``checkpoints.local`` file writes nothing into the user's folders.

``load_registry_overrides(path)`` / ``fetch(..., registry_file=path)`` replace entries' url,
filename, sha256, size and hash_prefix from a YAML or JSON file (stand-in files for rehearsals);
``REGISTRY`` itself is never changed by them.

Command line::

    offshelf checkpoints list [--registry FILE]
    offshelf checkpoints fetch NAME [NAME ...] [--cache DIR] [--lock FILE] [--offline] [--registry FILE]
    offshelf checkpoints verify NAME PATH [--lock FILE] [--registry FILE]

(the same as ``offshelf checkpoints ...``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


from offshelf.atomic import save_text

try:
    import fcntl
except ImportError:  # not POSIX: run without inter-process locks
    fcntl = None

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60
HASH_IN_FILENAME = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's convention, at least 6 digits
# A digest record is trusted only for a file whose ctime is this much older than the hash's start:
# more than one timestamp tick on Linux file systems (a jiffy, <= 10 ms) with room for small clock
# differences between an NFS client and its server.
RACY_NS = 1_000_000_000

ADM = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021"
ADM_LICENSE = "MIT (openai/guided-diffusion)"
TORCHVISION_LICENSE = "BSD-3-Clause (torchvision)"


class CheckpointError(RuntimeError):
    """A checkpoint could not be found, downloaded or verified; the message says how to fix it."""


class ChecksumError(CheckpointError):
    """A file's bytes differ from what the registry, its file name or the lock file pins."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    name: str
    url: str
    filename: str
    sha256: str | None = None
    hash_prefix: str | None = None
    license: str = ""
    description: str = ""
    size: int | None = None  # bytes, where known: a cheap first check before hashing


REGISTRY: dict[str, Checkpoint] = {}


def register(checkpoint: Checkpoint) -> Checkpoint:
    """Add (or replace) a registry entry, e.g. a torchvision classifier named at run time."""
    REGISTRY[checkpoint.name] = checkpoint
    return checkpoint


def hash_prefix_from_filename(filename: str) -> str | None:
    """``resnet50-11ad3fa6.pth`` -> ``"11ad3fa6"``; None for names without one."""
    match = HASH_IN_FILENAME.search(Path(filename).name)
    return match.group(1) if match else None


for _checkpoint in [
    Checkpoint("adm_imagenet128_cond_diffusion", f"{ADM}/128x128_diffusion.pt", "128x128_diffusion.pt",
               license=ADM_LICENSE, description="ADM class-conditional ImageNet 128x128 diffusion model"),
    Checkpoint("adm_imagenet128_classifier", f"{ADM}/128x128_classifier.pt", "128x128_classifier.pt",
               license=ADM_LICENSE, description="ADM noise-aware ImageNet 128x128 classifier (baseline)"),
    Checkpoint("adm_imagenet256_uncond_diffusion", f"{ADM}/256x256_diffusion_uncond.pt",
               "256x256_diffusion_uncond.pt", license=ADM_LICENSE,
               description="ADM unconditional ImageNet 256x256 diffusion model"),
    Checkpoint("adm_imagenet256_cond_diffusion", f"{ADM}/256x256_diffusion.pt", "256x256_diffusion.pt",
               license=ADM_LICENSE, description="ADM class-conditional ImageNet 256x256 diffusion model"),
    Checkpoint("edm_imagenet64_cond", "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl",
               "edm-imagenet-64x64-cond-adm.pkl", license="CC BY-NC-SA 4.0 (NVlabs/edm)",
               description="EDM class-conditional ImageNet 64x64 (ADM architecture), pickle with 'ema'"),
    Checkpoint("resnet50_v2", "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
               "resnet50-11ad3fa6.pth", hash_prefix="11ad3fa6", license=TORCHVISION_LICENSE,
               description="torchvision ResNet-50 IMAGENET1K_V2 (80.86% top-1), the paper's resnet50_weight_V2.pth"),
    Checkpoint("resnet101_v2", "https://download.pytorch.org/models/resnet101-cd907fc2.pth",
               "resnet101-cd907fc2.pth", hash_prefix="cd907fc2", license=TORCHVISION_LICENSE,
               description="torchvision ResNet-101 IMAGENET1K_V2 (81.89% top-1), the paper's resnet101_weight_V2.pth"),
    Checkpoint("dit_xl2_256", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt",
               "DiT-XL-2-256x256.pt", license="CC BY-NC 4.0 (facebookresearch/DiT)",
               description="DiT-XL/2 class-conditional ImageNet 256x256 latent diffusion transformer"),
    Checkpoint("ref_imagenet128", f"{ADM}/ref_batches/imagenet/128/VIRTUAL_imagenet128_labeled.npz",
               "VIRTUAL_imagenet128_labeled.npz", license=ADM_LICENSE,
               description="ADM ImageNet 128 reference batch: TF-Inception mu/sigma + 10k images"),
    Checkpoint("ref_imagenet256", f"{ADM}/ref_batches/imagenet/256/VIRTUAL_imagenet256_labeled.npz",
               "VIRTUAL_imagenet256_labeled.npz", license=ADM_LICENSE,
               description="ADM ImageNet 256 reference batch: TF-Inception mu/sigma + 10k images"),
    Checkpoint("ref_imagenet64_edm", "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/imagenet-64x64.npz",
               "imagenet-64x64.npz", license="CC BY-NC-SA 4.0 (NVlabs/edm)",
               description="EDM ImageNet 64x64 FID reference statistics (mu/sigma)"),
    # clean-fid's legacy_tensorflow mode: cleanfid.downloads_helper.inception_url (clean-fid 0.1.35).
    Checkpoint("inception_cleanfid_legacy_tf",
               "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt",
               "inception-2015-12-05.pt",
               license="Apache-2.0 (TF Inception; NVlabs TorchScript port)",
               description="TF Inception-v3 (2015-12-05) as TorchScript; clean-fid InceptionV3W(path, download=False)"),
    Checkpoint("inception_pytorch_fid",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
               "pt_inception-2015-12-05-6726825d.pth", hash_prefix="6726825d",
               license="Apache-2.0 (mseitzer/pytorch-fid)",
               description="pytorch-fid's FID Inception port, used by the paper's evaluation"),
]:
    register(_checkpoint)


def default_cache_dir() -> Path:
    """``$OFFSHELF_CACHE``, else ``~/.cache/offshelf``."""
    return Path(os.environ.get("OFFSHELF_CACHE") or Path.home() / ".cache" / "offshelf")


TORCHVISION_PREFIX = "torchvision_"  # + any torchvision classification model: its DEFAULT weights


def torchvision_weights(model: str):
    """torchvision's ``DEFAULT`` weights enum member of classification model ``model``; an unknown
    name is a :class:`CheckpointError` with the closest valid names."""
    import difflib

    import torchvision.models as tvm

    valid = tvm.list_models(module=tvm)
    if model not in valid:
        close = difflib.get_close_matches(model, valid, n=5, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CheckpointError(f"unknown classifier {model!r}; {hint}valid torchvision classification models include "
                              f"resnet50, resnet101, {', '.join(valid[:6])}, ... ({len(valid)} in all: "
                              f"torchvision.models.list_models(module=torchvision.models))")
    return tvm.get_model_weights(model).DEFAULT


def torchvision_checkpoint(model: str) -> Checkpoint:
    """Registry entry ``torchvision_<model>`` (URL and hash prefix from torchvision's weights
    enum, the prefix being the one torch.hub names its files with), registered on first use.
    :func:`get` resolves such names too, so any process (a ``fetch_checkpoint`` job, ``offshelf
    checkpoints fetch torchvision_convnext_tiny``) knows every torchvision classifier."""
    name = TORCHVISION_PREFIX + model
    if name not in REGISTRY:
        weights = torchvision_weights(model)
        filename = weights.url.rsplit("/", 1)[-1]
        register(Checkpoint(name, weights.url, filename, hash_prefix=hash_prefix_from_filename(filename),
                            license=TORCHVISION_LICENSE, description=f"torchvision {model} {weights}"))
    return REGISTRY[name]


def get(name: str, registry_file: str | os.PathLike | None = None) -> Checkpoint:
    """Registry entry ``name``, with the overrides of ``registry_file`` applied if one is given."""
    if name not in REGISTRY and name.startswith(TORCHVISION_PREFIX):
        torchvision_checkpoint(name.removeprefix(TORCHVISION_PREFIX))
    if name not in REGISTRY:
        raise CheckpointError(f"unknown checkpoint {name!r}; known: {', '.join(sorted(REGISTRY))}")
    if registry_file is not None:
        return load_registry_overrides(registry_file).get(name, REGISTRY[name])
    return REGISTRY[name]


# ----------------------------------------------------------------------------- registry overrides

OVERRIDE_KEYS = ("url", "filename", "sha256", "size", "hash_prefix")
_HEX = re.compile(r"[0-9a-f]+")


def _override_value(source: Path, name: str, key: str, value):
    """``value`` checked (and normalised) for override key ``key``; a one-line error otherwise."""
    where = f"registry overrides {source}: {name}.{key}"
    if value is None and key in ("sha256", "size", "hash_prefix"):
        return None  # null drops a pin the stand-in file cannot meet
    if key == "url":
        if not isinstance(value, str) or not re.match(r"https?://[^/\s]+", value):
            raise CheckpointError(f"{where}: expected an http:// or https:// URL, got {value!r}")
        return value
    if key == "filename":
        if (not isinstance(value, str) or not value or value.startswith(".") or "/" in value
                or "\\" in value or "\0" in value):
            raise CheckpointError(f"{where}: expected a plain file name (no folders, not hidden), got {value!r}")
        return value
    if key == "size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise CheckpointError(f"{where}: expected a byte count (integer >= 0) or null, got {value!r}")
        return value
    # sha256 / hash_prefix: lower-case hex
    if isinstance(value, int) and not isinstance(value, bool):  # YAML reads 11223344 as a number
        raise CheckpointError(f"{where}: quote it: YAML read {value!r} as a number, not a string of hex digits")
    length_ok = (lambda n: n == 64) if key == "sha256" else (lambda n: 6 <= n <= 64)
    if not isinstance(value, str) or not _HEX.fullmatch(value.lower()) or not length_ok(len(value)):
        expected = "64 hex digits" if key == "sha256" else "6 to 64 hex digits"
        raise CheckpointError(f"{where}: expected {expected} or null, got {value!r}")
    return value.lower()


def load_registry_overrides(path: str | os.PathLike) -> dict[str, Checkpoint]:
    """Read a YAML (or ``.json``) file ``{name: {url, filename, sha256, size, hash_prefix}}`` and
    return the registry entries it names with those fields replaced. A key left out keeps the
    registry's value; ``null`` drops a pin (sha256, size, hash_prefix). ``REGISTRY`` is unchanged:
    overrides act only where they are passed explicitly. Unknown names or keys, bad values, and a
    sha256 contradicting the hash prefix are one-line :class:`CheckpointError` s naming the file."""
    from offshelf.yaml_file import YAMLSyntaxError, read_yaml_file

    path = Path(path)
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else read_yaml_file(path)
    except OSError as e:
        raise CheckpointError(f"registry overrides {path}: cannot read it ({e.strerror})") from None
    except YAMLSyntaxError as e:  # before ValueError: it is one
        line = f" at line {e.line}" if e.line is not None else ""
        raise CheckpointError(f"registry overrides {path}: not valid YAML{line} ({e.problem})") from None
    except ValueError as e:
        raise CheckpointError(f"registry overrides {path}: not valid JSON ({e})") from None
    if data is None:  # an empty file overrides nothing
        return {}
    if not isinstance(data, dict):
        raise CheckpointError(f"registry overrides {path}: expected a mapping name -> {{{', '.join(OVERRIDE_KEYS)}}}, "
                              f"got {type(data).__name__}")
    overridden = {}
    for name, fields in data.items():
        if name not in REGISTRY:
            raise CheckpointError(f"registry overrides {path}: unknown checkpoint {name!r}; "
                                  f"known: {', '.join(sorted(REGISTRY))}")
        if not isinstance(fields, dict):
            raise CheckpointError(f"registry overrides {path}: {name}: expected a mapping of "
                                  f"{', '.join(OVERRIDE_KEYS)}, got {fields!r}")
        for key in fields:
            if key not in OVERRIDE_KEYS:
                raise CheckpointError(f"registry overrides {path}: {name}.{key}: unknown key; "
                                      f"allowed: {', '.join(OVERRIDE_KEYS)}")
        values = {key: _override_value(path, name, key, value) for key, value in fields.items()}
        checkpoint = dataclasses.replace(REGISTRY[name], **values)
        # A stand-in file keeps the registry's hash prefix unless told otherwise: say so now, not
        # after a multi-GB download.
        if checkpoint.sha256 and checkpoint.hash_prefix and not checkpoint.sha256.startswith(checkpoint.hash_prefix):
            raise CheckpointError(f"registry overrides {path}: {name}.sha256 {checkpoint.sha256} does not start with "
                                  f"its hash_prefix {checkpoint.hash_prefix}; set {name}.hash_prefix to null "
                                  f"or to the sha256's first digits")
        overridden[name] = checkpoint
    return overridden


# ----------------------------------------------------------------------------- small file helpers

@contextlib.contextmanager
def _exclusive(mutex: Path):
    """Hold an inter-process lock on ``mutex`` so parallel jobs neither download the same file
    into one .part nor lose each other's lock-file entries."""
    if fcntl is None:
        yield
        return
    mutex.parent.mkdir(parents=True, exist_ok=True)
    with open(mutex, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _hash_file(path: Path) -> str:
    """The full sha256 of a file's bytes (the only place that reads a whole checkpoint)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()


def _stat_key(stat: os.stat_result) -> list[int]:
    # ctime is in the key because nothing short of root or the raw device can set it (see the
    # module docstring); device and inode make a record follow the file, not a path that may
    # later name another file.
    return [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _record_path(cache_dir: str | os.PathLike | None, stat: os.stat_result) -> Path:
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    inode = hashlib.sha256(f"{stat.st_dev}:{stat.st_ino}".encode()).hexdigest()[:32]
    return cache / ".verified" / f"{inode}.json"


def file_sha256(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None, rehash: bool = False) -> str:
    """sha256 of a file. Reuses the digest recorded under ``<cache_dir>/.verified/`` (default
    :func:`default_cache_dir`) while the file's device, inode, size, mtime and ctime all match;
    ``rehash=True`` always reads the whole file. Nothing is ever written beside ``path``."""
    path = Path(path)
    before = path.stat()
    record_path = _record_path(cache_dir, before)
    if not rehash:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            record = json.loads(record_path.read_text())
            if record["key"] == _stat_key(before):
                return record["sha256"]
    started = time.time_ns()
    digest = _hash_file(path)
    after = path.stat()
    # Record only what provably describes the bytes read: unchanged during the hash, and last
    # changed at least RACY_NS before it began (a same-tick write would not move ctime).
    if _stat_key(after) == _stat_key(before) and started - before.st_ctime_ns >= RACY_NS:
        record = {"path": str(path.resolve()), "key": _stat_key(before), "sha256": digest}
        with contextlib.suppress(OSError):  # an unwritable cache only costs a re-hash next time
            record_path.parent.mkdir(parents=True, exist_ok=True)
            save_text(record_path, json.dumps(record) + "\n")
    return digest


# ----------------------------------------------------------------------------- lock file

def read_lock(lock_file: str | os.PathLike | None) -> dict:
    if lock_file is None or not Path(lock_file).exists():
        return {}
    try:
        lock = json.loads(Path(lock_file).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"lock file {lock_file} is not readable JSON ({e}); fix or delete it") from None
    if not isinstance(lock, dict):
        raise CheckpointError(f"lock file {lock_file} must hold a JSON object name -> {{url, sha256, size}}")
    return lock


def _lock_entry(lock_file, checkpoint: Checkpoint) -> dict | None:
    entry = read_lock(lock_file).get(checkpoint.name)
    if entry is None:
        return None
    if not isinstance(entry, dict) or not {"url", "sha256", "size"} <= entry.keys():
        raise CheckpointError(f"lock file {lock_file}: entry {checkpoint.name!r} must have url, sha256 and size")
    if entry["url"] != checkpoint.url:
        raise CheckpointError(
            f"lock file {lock_file} pins {checkpoint.name!r} from {entry['url']}, but the registry now says "
            f"{checkpoint.url}; delete that entry to pin the new file")
    return entry


def _pin(lock_file, checkpoint: Checkpoint, digest: str, size: int) -> None:
    lock_file = Path(lock_file)
    mutex = Path(tempfile.gettempdir()) / f"offshelf-{hashlib.sha1(str(lock_file.resolve()).encode()).hexdigest()[:16]}.lck"
    with _exclusive(mutex):
        lock = read_lock(lock_file)  # re-read under the mutex: another job may have pinned meanwhile
        lock.setdefault(checkpoint.name, {"url": checkpoint.url, "sha256": digest, "size": size})
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        save_text(lock_file, json.dumps(lock, indent=2, sort_keys=True) + "\n")
    log.info("pinned %s (sha256 %s, %d bytes) in %s", checkpoint.name, digest, size, lock_file)


def _check_digest(digest: str, source: str, expected_sha256: str | None, hash_prefix: str | None,
                  pinned_by: str) -> None:
    if expected_sha256 is not None and digest != expected_sha256.lower():
        raise ChecksumError(f"{source} has sha256 {digest}, expected {expected_sha256} ({pinned_by})")
    if hash_prefix is not None and not digest.startswith(hash_prefix.lower()):
        raise ChecksumError(f"{source} has sha256 {digest}, which does not start with the hash prefix "
                            f"{hash_prefix} its file name promises")


def _check_size(path: Path, size: int, checkpoint: Checkpoint, entry: dict | None, lock_file) -> None:
    # A size mismatch is known from one stat: say so before hashing gigabytes.
    if checkpoint.size is not None and size != checkpoint.size:
        raise ChecksumError(f"{path} has {size} bytes, but the registry pins {checkpoint.name!r} at "
                            f"{checkpoint.size} bytes (truncated, or a different file)")
    if entry is not None and entry["size"] != size:
        raise ChecksumError(f"{path} has {size} bytes, but {lock_file} pins {checkpoint.name!r} at "
                            f"{entry['size']} bytes (truncated, or a different file)")


def _check_pins(path: Path, digest: str, size: int, checkpoint: Checkpoint, entry: dict | None, lock_file) -> None:
    _check_digest(digest, str(path), checkpoint.sha256, checkpoint.hash_prefix, "the registry")
    if entry is not None:
        _check_digest(digest, str(path), entry["sha256"], None, f"pinned for {checkpoint.name!r} in {lock_file}")
    elif lock_file is not None and checkpoint.sha256 is None:
        _pin(lock_file, checkpoint, digest, size)


def verify(path: str | os.PathLike, checkpoint: Checkpoint, lock_file: str | os.PathLike | None = None,
           cache_dir: str | os.PathLike | None = None, rehash: bool = False) -> str:
    """Check ``path`` against every pin known for ``checkpoint`` (registry sha256, size and hash
    prefix, lock sha256 and size) and return its sha256. A file with no full hash known yet is
    pinned in ``lock_file``. The digest comes from :func:`file_sha256` (its record under
    ``cache_dir``, or a full hash with ``rehash``). Raises :class:`ChecksumError` on mismatch;
    never modifies ``path`` and never writes into its folder."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {checkpoint.name!r}: {path} is not a file")
    entry = _lock_entry(lock_file, checkpoint)
    size = path.stat().st_size
    _check_size(path, size, checkpoint, entry, lock_file)
    digest = file_sha256(path, cache_dir, rehash)
    _check_pins(path, digest, size, checkpoint, entry, lock_file)
    return digest


#: the lock file the workflow uses when its config names none (workflow/rules/models.smk), relative
#: to the working directory; ``offshelf checkpoints fetch|verify`` default to it too
DEFAULT_LOCK = "checkpoints.lock.json"


class NothingComparedError(CheckpointError):
    """A file was to be verified, but no pin of any kind exists to compare it with."""


def verify_against_pins(path: str | os.PathLike, name: str, lock_file: str | os.PathLike | None,
                        cache_dir: str | os.PathLike | None = None,
                        registry_file: str | os.PathLike | None = None) -> tuple[str, list[str]]:
    """``offshelf checkpoints verify``: check ``path`` against every pin of ``name`` (registry sha256,
    size and hash prefix, the lock file's sha256 and size), hashing it in full, and return its sha256
    and what it was compared with. Unlike :func:`verify` it never pins: a file checked here is not
    thereby trusted. With no pin at all, nothing can be compared: :class:`NothingComparedError`."""
    checkpoint = get(name, registry_file)
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {name!r}: {path} is not a file")
    entry = _lock_entry(lock_file, checkpoint)
    compared = [what for what, present in (
        ("the registry's sha256", checkpoint.sha256), ("the registry's size", checkpoint.size is not None),
        ("the registry's hash prefix", checkpoint.hash_prefix), (f"the sha256 and size pinned in {lock_file}", entry))
        if present]
    if not compared:
        raise NothingComparedError(
            f"checkpoint {name!r}: nothing to compare {path} with: the registry publishes no hash for it and "
            f"{lock_file or 'no lock file'} pins none (the first `offshelf checkpoints fetch {name}` pins it; "
            f"give --lock LOCK for another lock file)")
    size = path.stat().st_size
    _check_size(path, size, checkpoint, entry, lock_file)
    digest = file_sha256(path, cache_dir, True)
    _check_digest(digest, str(path), checkpoint.sha256, checkpoint.hash_prefix, "the registry")
    if entry is not None:
        _check_digest(digest, str(path), entry["sha256"], None, f"pinned for {name!r} in {lock_file}")
    return digest, compared


# ----------------------------------------------------------------------------- download

def _manual_hint(name: str | None, url: str, dest: Path) -> str:
    what = f"checkpoint {name!r}" if name else "the file"
    return (f"download {what} by hand from {url} and place it at {dest}, "
            f"or point offshelf at a local copy (local_path= / the checkpoint's path in the config)")


class _NoProgressBar:
    """tqdm's interface, showing nothing: a download without a progress bar needs no tqdm."""

    def __init__(self, **_):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *_):
        return False

    def update(self, _n=1):
        pass


def _progress_bar(progress: bool):
    if not progress:
        return _NoProgressBar
    from offshelf.extras import needs
    needs("offshelf.checkpoints (a download's progress bar)", "tqdm")
    from tqdm import tqdm
    return tqdm


def download(url: str, dest: str | os.PathLike, expected_sha256: str | None = None,
             hash_prefix: str | None = None, progress: bool = True, name: str | None = None,
             expected_size: int | None = None) -> str:
    """Stream ``url`` into ``dest + ".part"``, resuming an existing .part with an HTTP Range
    request, check the byte count against Content-Length and the sha256 against
    ``expected_sha256`` / ``hash_prefix`` (and ``expected_size``), then move it into place.
    Returns the sha256.

    A truncated transfer keeps the .part (the next call resumes it); a completed transfer with
    the wrong hash deletes it (resuming cannot fix wrong bytes) and nothing is put in place."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0

    request = urllib.request.Request(url, headers={"User-Agent": "offshelf"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:  # the .part is as long as the file or longer: start afresh
            part.unlink()
            return download(url, dest, expected_sha256, hash_prefix, progress, name, expected_size)
        raise CheckpointError(f"HTTP {e.code} {e.reason} for {url}; {_manual_hint(name, url, dest)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise CheckpointError(f"cannot reach {url} ({reason}); {_manual_hint(name, url, dest)}") from None

    hasher = hashlib.sha256()
    with response:
        content_range = response.headers.get("Content-Range", "")
        resumed = offset > 0 and response.status == 206 and content_range.startswith(f"bytes {offset}-")
        if resumed:
            with open(part, "rb") as f:
                while chunk := f.read(CHUNK_BYTES):
                    hasher.update(chunk)
        elif response.status == 206:  # a range we did not ask for: never splice it into a file
            response.close()
            part.unlink(missing_ok=True)
            if offset:
                return download(url, dest, expected_sha256, hash_prefix, progress, name, expected_size)
            raise CheckpointError(f"{url} answered a plain request with partial content ({content_range!r})")
        else:  # no .part, or the server ignored the Range header and sent the whole file
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length is not None else None
        try:
            with open(part, "ab" if resumed else "wb") as f, _progress_bar(progress)(
                    total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=dest.name, disable=not progress) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise CheckpointError(f"download of {url} broke off ({e}); the partial file {part} is kept "
                                  f"and the next fetch resumes it") from None

    received = part.stat().st_size
    if total is not None and received != total:
        raise CheckpointError(f"download of {url} is truncated: received {received} of {total} bytes; "
                              f"the partial file {part} is kept and the next fetch resumes it")
    digest = hasher.hexdigest()
    try:
        if expected_size is not None and received != expected_size:
            raise ChecksumError(f"download of {url} has {received} bytes, expected {expected_size} (the registry)")
        _check_digest(digest, f"download of {url}", expected_sha256, hash_prefix, "the registry or lock file")
    except ChecksumError:
        part.unlink()
        raise
    os.replace(part, dest)
    # No digest record here: the rename just moved the file's ctime, so a record would be racy
    # (see RACY_NS); the first verification after this reads the file once and records it.
    return digest


# ----------------------------------------------------------------------------- fetch

def fetch(name: str, cache_dir: str | os.PathLike | None = None, lock_file: str | os.PathLike | None = None,
          local_path: str | os.PathLike | None = None, offline: bool = False, progress: bool = True,
          registry_file: str | os.PathLike | None = None, rehash: bool | None = None) -> Path:
    """Path to the verified file of checkpoint ``name``.

    ``local_path``: verify that file and return it as is (never copied, never deleted, nothing
    written beside it). Otherwise use ``cache_dir/<filename>`` (default :func:`default_cache_dir`):
    a cached file that fails verification is deleted and downloaded again (``offline``: reported
    with its path). ``registry_file``: apply :func:`load_registry_overrides` to this entry.
    ``rehash``: None (default) hashes a cached file in full and reuses the digest record for a
    ``local_path``; True / False force a full hash / allow the record for both."""
    checkpoint = get(name, registry_file)
    if local_path is not None:
        local_path = Path(local_path).expanduser()
        if not local_path.is_file():
            raise CheckpointError(f"checkpoint {name!r}: local file {local_path} does not exist "
                                  f"(it can be downloaded from {checkpoint.url})")
        verify(local_path, checkpoint, lock_file, cache_dir, rehash=bool(rehash))
        return local_path

    cache = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).expanduser().resolve()
    dest = cache / checkpoint.filename
    with _exclusive(dest.with_name(f".{dest.name}.lck")):
        if dest.exists():
            try:
                verify(dest, checkpoint, lock_file, cache, rehash=True if rehash is None else rehash)
                return dest
            except ChecksumError as e:
                if offline:
                    raise ChecksumError(f"cached checkpoint {name!r} at {dest} is corrupt: {e}; offline, so it is "
                                        f"not downloaded again: delete it and fetch online, or "
                                        f"{_manual_hint(name, checkpoint.url, dest)}") from None
                log.warning("cached %s failed verification (%s); downloading it again", dest, e)
                dest.unlink()
        if offline:
            raise CheckpointError(f"checkpoint {name!r} is not in the cache ({dest}) and offline mode is on; "
                                  f"{_manual_hint(name, checkpoint.url, dest)}")
        entry = _lock_entry(lock_file, checkpoint)
        expected = checkpoint.sha256 or (entry["sha256"] if entry else None)
        log.info("downloading %s from %s to %s", name, checkpoint.url, dest)
        try:
            digest = download(checkpoint.url, dest, expected, checkpoint.hash_prefix, progress=progress, name=name,
                              expected_size=checkpoint.size)
        except ChecksumError as e:
            hint = (f"; if the upstream file changed on purpose, delete the entry {name!r} from {lock_file} to pin it again"
                    if entry is not None and checkpoint.sha256 is None else "")
            raise ChecksumError(f"checkpoint {name!r}: {e}; nothing was put at {dest}{hint}") from None
        # The download hashed every byte it wrote: check the lock's pins and pin a new file there
        # without reading it again.
        _check_pins(dest, digest, dest.stat().st_size, checkpoint, entry, lock_file)
        return dest

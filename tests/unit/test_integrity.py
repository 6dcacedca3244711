"""Issue 11, cases 3, 5, 6 (checkpoint half) and 9, through the library's real entry points.

3: verification never serves changed bytes and never writes into a user's folders.
   Registry overrides (stand-in files for the ImageNet rehearsals) download and verify for real.
5: digits checkpoints carry a sha256 of their content and refuse flipped bytes.
6: a digits checkpoint with unknown config keys is a one-line error naming the file and keys.
9: concurrent writers of one target never trip each other.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

import offshelf
from offshelf import checkpoints
from offshelf.backbones import digits
from offshelf.checkpoints import REGISTRY, Checkpoint, CheckpointError, ChecksumError, fetch, load_registry_overrides


@pytest.fixture(autouse=True)
def own_default_cache(tmp_path, monkeypatch):
    """Digest records of local files go to the default cache: keep them out of ~/.cache."""
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "default-cache"))


@pytest.fixture
def hash_calls(monkeypatch):
    """Counts full reads of a file by the checkpoint module (the real hash still runs)."""
    calls = []
    real = checkpoints._hash_file

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(checkpoints, "_hash_file", counting)
    return calls


def settle(path: Path) -> None:
    """Wait until ``path`` was last changed RACY_NS ago: younger files are never recorded."""
    while time.time_ns() - path.stat().st_ctime_ns < checkpoints.RACY_NS:
        time.sleep(0.05)


def blob_checkpoint(monkeypatch, data: bytes) -> Checkpoint:
    """A registry entry pinning ``data`` by sha256 and size; its URL is never reached."""
    checkpoint = Checkpoint("blob", "http://127.0.0.1:9/blob.bin", "blob.bin",
                            sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    monkeypatch.setitem(REGISTRY, "blob", checkpoint)
    return checkpoint


# ----------------------------------------------------------------------------- case 3

def test_corruption_with_restored_mtime_is_never_served(tmp_path, monkeypatch, hash_calls):
    data = bytes(range(256)) * 64
    blob_checkpoint(monkeypatch, data)
    cache = tmp_path / "cache"
    cache.mkdir()
    path = (cache / "blob.bin").resolve()
    path.write_bytes(data)
    settle(path)
    assert fetch("blob", cache_dir=cache, local_path=path) == path  # verified and recorded
    assert fetch("blob", cache_dir=cache, local_path=path) == path
    assert len(hash_calls) == 1

    before = path.stat()
    corrupt = bytearray(data)
    corrupt[4096:4160] = bytes(b ^ 0xFF for b in corrupt[4096:4160])  # 64 flipped bytes, same size
    path.write_bytes(bytes(corrupt))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # what cp -p / rsync -t do
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)  # the old key matched
    assert after.st_ctime_ns != before.st_ctime_ns  # utime cannot set ctime

    with pytest.raises(ChecksumError) as err:  # what every sampling job calls
        fetch("blob", cache_dir=cache, local_path=path)
    assert str(path) in str(err.value) and hashlib.sha256(corrupt).hexdigest() in str(err.value)
    with pytest.raises(ChecksumError) as err:  # the fetch job, offline: reported, kept
        fetch("blob", cache_dir=cache, offline=True)
    assert str(path) in str(err.value) and "corrupt" in str(err.value)
    assert len(hash_calls) == 3 and path.read_bytes() == bytes(corrupt)


def test_cached_file_is_rehashed_by_fetch_even_with_a_matching_record(tmp_path, monkeypatch, hash_calls):
    """Bit rot moves no timestamp: fetch of a cached file reads it in full every time."""
    data = b"weights" * 1000
    blob_checkpoint(monkeypatch, data)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "blob.bin").write_bytes(data)
    settle(cache / "blob.bin")
    for _ in range(3):
        assert fetch("blob", cache_dir=cache, offline=True).read_bytes() == data
    assert len(hash_calls) == 3


def test_local_file_in_read_only_folder_is_verified_and_nothing_written_there(tmp_path, monkeypatch):
    data = b"user weights" * 500
    checkpoint = blob_checkpoint(monkeypatch, data)
    folder = tmp_path / "my_models"
    folder.mkdir()
    local = folder / "weights.bin"
    local.write_bytes(data)
    settle(local)
    folder.chmod(0o555)
    try:
        lock = tmp_path / "lock.json"
        assert fetch("blob", lock_file=lock, local_path=local) == local
        assert checkpoints.verify(local, checkpoint) == checkpoint.sha256
        assert sorted(os.listdir(folder)) == ["weights.bin"]  # no sidecar, no temp file
        assert stat.S_IMODE(folder.stat().st_mode) == 0o555 and local.read_bytes() == data
    finally:
        folder.chmod(0o755)
    # The digest went to offshelf's own cache folder instead.
    [record] = (tmp_path / "default-cache" / ".verified").iterdir()
    assert json.loads(record.read_text())["path"] == str(local.resolve())


def test_unchanged_file_is_not_rehashed_and_any_stat_change_rehashes(tmp_path, monkeypatch, hash_calls):
    data = b"x" * 10_000
    blob_checkpoint(monkeypatch, data)
    local = tmp_path / "blob.bin"
    local.write_bytes(data)
    settle(local)
    for _ in range(5):
        fetch("blob", local_path=local)
    assert hash_calls == [local]  # one full read, four records reused

    # touch with the same mtime: only ctime moved, and that alone invalidates the record.
    mtime = local.stat().st_mtime_ns
    os.utime(local, ns=(mtime, mtime))
    fetch("blob", local_path=local)
    assert len(hash_calls) == 2
    settle(local)
    fetch("blob", local_path=local)  # settled again: recorded now
    fetch("blob", local_path=local)
    assert len(hash_calls) == 3


# ----------------------------------------------------------------------------- registry overrides

class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """A small stand-in file served from a real HTTP server on 127.0.0.1 (thread in this test)."""
    root = tmp_path / "served"
    root.mkdir()
    data = os.urandom(50_000)
    (root / "standin.pth").write_bytes(data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/standin.pth", data
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_registry_override_downloads_and_verifies_a_stand_in(tmp_path, served):
    url, data = served
    original = REGISTRY["resnet50_v2"]
    overrides = tmp_path / "registry.yaml"
    sha = hashlib.sha256(data).hexdigest()
    overrides.write_text(f"resnet50_v2:\n  url: {url}\n  filename: resnet50-standin.pth\n"
                         f"  sha256: {sha.upper()}\n  size: {len(data)}\n  hash_prefix: null\n")
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"

    path = fetch("resnet50_v2", cache_dir=cache, lock_file=lock, registry_file=overrides, progress=False)

    assert path == cache.resolve() / "resnet50-standin.pth" and path.read_bytes() == data
    assert not lock.exists()  # a full sha256 is known: nothing to pin
    assert REGISTRY["resnet50_v2"] is original and original.hash_prefix == "11ad3fa6"  # overrides are explicit
    entry = load_registry_overrides(overrides)["resnet50_v2"]
    assert (entry.url, entry.sha256, entry.size, entry.hash_prefix) == (url, sha, len(data), None)
    assert entry.license == original.license  # keys left out keep the registry's value
    assert checkpoints.get("resnet50_v2", overrides) == entry
    from offshelf.cli import main as cli_main

    assert cli_main(["checkpoints", "fetch", "resnet50_v2", "--cache", str(cache), "--registry", str(overrides)]) == 0


def test_registry_override_with_wrong_sha256_leaves_nothing_in_the_cache(tmp_path, served):
    url, data = served
    wrong = hashlib.sha256(b"not the served file").hexdigest()
    overrides = tmp_path / "registry.json"
    overrides.write_text(json.dumps({"resnet50_v2": {"url": url, "filename": "standin.pth", "sha256": wrong,
                                                     "hash_prefix": None}}))
    cache = tmp_path / "cache"

    with pytest.raises(ChecksumError) as err:
        fetch("resnet50_v2", cache_dir=cache, registry_file=overrides, progress=False)

    assert wrong in str(err.value) and hashlib.sha256(data).hexdigest() in str(err.value)
    assert "nothing was put at" in str(err.value)
    assert os.listdir(cache) == [".standin.pth.lck"]  # only the download mutex: no file, no .part


@pytest.mark.parametrize("text, expected", [
    ("nope:\n  url: http://x/y\n", "unknown checkpoint 'nope'"),
    ("resnet50_v2:\n  md5: abc\n", "resnet50_v2.md5: unknown key; allowed: url, filename, sha256, size, hash_prefix"),
    ("resnet50_v2:\n  sha256: abcd\n", "resnet50_v2.sha256: expected 64 hex digits or null"),
    ("resnet50_v2:\n  size: -1\n", "resnet50_v2.size: expected a byte count"),
    ("resnet50_v2:\n  hash_prefix: 11223344\n", "resnet50_v2.hash_prefix: quote it"),
    ("resnet50_v2:\n  url: ftp://host/file\n", "resnet50_v2.url: expected an http:// or https:// URL"),
    ("resnet50_v2:\n  filename: ../escape.pth\n", "resnet50_v2.filename: expected a plain file name"),
    ("resnet50_v2:\n  sha256: " + "ab" * 32 + "\n", "does not start with its hash_prefix 11ad3fa6"),
    ("resnet50_v2: [url]\n", "resnet50_v2: expected a mapping"),
    ("resnet50_v2:\n  url: [unclosed\n", "not valid YAML at line 3"),
])
def test_registry_override_errors_are_one_line_naming_file_and_key(tmp_path, text, expected):
    overrides = tmp_path / "overrides.yaml"
    overrides.write_text(text)
    with pytest.raises(CheckpointError) as err:
        load_registry_overrides(overrides)
    message = str(err.value)
    assert "\n" not in message and str(overrides) in message and expected in message


# ----------------------------------------------------------------------------- cases 5 and 6

@pytest.fixture
def digits_checkpoint(tmp_path):
    torch.manual_seed(0)
    config = digits.TrainConfig(role="offshelf", width=16)
    model = digits.build("offshelf", 16)
    path = tmp_path / "offshelf.pt"
    digits.save_checkpoint(model, config, {"accuracy": 0.97}, path)
    return path, model


def _data_region(path: Path) -> tuple[str, int, int]:
    """(member, byte offset, length) of the largest tensor storage in a torch zip checkpoint."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    with open(path, "rb") as f:  # local header: 30 bytes, then name and extra field, then the data
        f.seek(info.header_offset + 26)
        name_length, extra_length = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    return info.filename, info.header_offset + 30 + name_length + extra_length, info.file_size


def test_flipped_bytes_in_a_digits_checkpoint_are_refused(digits_checkpoint):
    path, model = digits_checkpoint
    member, offset, length = _data_region(path)
    assert length >= 4096
    raw = bytearray(path.read_bytes())
    start = offset + length // 2
    raw[start:start + 64] = bytes(b ^ 0x5A for b in raw[start:start + 64])
    path.write_bytes(bytes(raw))

    # Without the checksum this loads silently with moved weights (what issue 11 saw):
    payload = torch.load(path, map_location="cpu", weights_only=True)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, payload["state_dict"][k])]
    assert len(changed) == 1

    with pytest.raises(ValueError) as err:
        digits.load_checkpoint(path, "offshelf")
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "corrupt" in message and payload["sha256"] in message


def test_checkpoint_records_the_sha256_of_its_content(digits_checkpoint):
    path, model = digits_checkpoint
    payload = torch.load(path, map_location="cpu", weights_only=True)
    assert payload["format"] == "offshelf-digits-v2"
    assert payload["sha256"] == digits.payload_sha256(payload["config"], {"accuracy": 0.97}, model.state_dict())
    loaded, config, metrics = digits.load_checkpoint(path, "offshelf")
    assert metrics == {"accuracy": 0.97} and config.width == 16
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


def test_unknown_config_keys_are_one_line_naming_file_and_keys(digits_checkpoint):
    path, _ = digits_checkpoint
    payload = torch.load(path, map_location="cpu", weights_only=True)
    config = {**payload["config"], "dropout": 0.1, "attention": True}  # a newer offshelf's checkpoint
    payload.update(config=config, sha256=digits.payload_sha256(config, payload["metrics"], payload["state_dict"]))
    torch.save(payload, path)

    with pytest.raises(ValueError) as err:
        digits.load_checkpoint(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "'attention', 'dropout'" in message


def test_old_checkpoint_without_checksum_is_refused_with_how_to_retrain(digits_checkpoint):
    path, _ = digits_checkpoint
    payload = torch.load(path, map_location="cpu", weights_only=True)
    del payload["sha256"]
    payload["format"] = "offshelf-digits-v1"
    torch.save(payload, path)
    with pytest.raises(ValueError) as err:
        digits.load_checkpoint(path)
    assert str(path) in str(err.value) and "retrain" in str(err.value) and "--forcerun train_model" in str(err.value)


# ----------------------------------------------------------------------------- case 9

WRITER = """
import sys
from offshelf.atomic import atomic_write
letter, rounds, target = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
def write(tmp):
    with open(tmp, "wb") as f:
        for _ in range(16):  # in pieces: the other writer runs between them
            f.write(letter * 4096)
            f.flush()
for _ in range(rounds):
    atomic_write(target, write)
"""


def test_concurrent_writers_of_one_target_never_trip_each_other(tmp_path):
    target = tmp_path / "shard0.npz"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(offshelf.__file__).parents[1]),
                                                         os.environ.get("PYTHONPATH", "")])}
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, letter, "300", str(target)], env=env,
                                stderr=subprocess.PIPE, text=True) for letter in "AB"]
    payloads = {b"A" * 65536, b"B" * 65536}
    while any(w.poll() is None for w in writers):  # a reader only ever sees a complete payload
        if target.exists():
            assert target.read_bytes() in payloads
    errors = [w.stderr.read() for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert target.read_bytes() in payloads
    assert os.listdir(tmp_path) == ["shard0.npz"]  # every writer removed its own temp file

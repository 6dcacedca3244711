"""Verified, resumable downloads against a real local HTTP server (with Range support)."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from offshelf import checkpoints
from offshelf.checkpoints import REGISTRY, Checkpoint, CheckpointError, ChecksumError, fetch


@pytest.fixture(autouse=True)
def own_default_cache(tmp_path, monkeypatch):
    """Digest records of local files go to the default cache: keep them out of ~/.cache."""
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path / "default-cache"))


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root``; honours ``Range: bytes=N-`` unless ``server.ignore_range``;
    for paths in ``server.cut`` it announces the full Content-Length but sends only half."""

    def do_GET(self):
        self.server.requests.append((self.path, self.headers.get("Range")))
        path = self.server.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        data = path.read_bytes()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not self.server.ignore_range:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if self.path.lstrip("/") in self.server.cut:
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Server:
    def __init__(self, root: Path):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
        self.httpd.root, self.httpd.requests, self.httpd.cut, self.httpd.ignore_range = root, [], set(), False
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.running = True

    def url(self, filename: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{filename}"

    @property
    def requests(self) -> list:
        return self.httpd.requests

    def stop(self):
        if self.running:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join()
            self.running = False


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root)
    yield srv
    srv.stop()


@pytest.fixture
def payload(server):
    """A small torchvision-style state dict served as ``tiny-<sha256 prefix>.pth``."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.ReLU(), torch.nn.Conv2d(64, 64, 3))
    raw = server.httpd.root / "tiny.pth"
    torch.save(model.state_dict(), raw)
    data = raw.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    served = raw.rename(raw.with_name(f"tiny-{sha[:8]}.pth"))
    return served, data, sha


@pytest.fixture
def tiny(server, payload, monkeypatch):
    """Registry entry for the served file (removed again after the test)."""
    served, data, sha = payload
    checkpoint = Checkpoint("tiny", server.url(served.name), served.name, hash_prefix=sha[:8], license="test")
    monkeypatch.setitem(REGISTRY, "tiny", checkpoint)
    return checkpoint


def test_fresh_download_verifies_prefix_pins_lock_then_reuses_cache_offline(tmp_path, server, payload, tiny):
    _, data, sha = payload
    cache, lock = tmp_path / "cache", tmp_path / "checkpoints.lock.json"

    path = fetch("tiny", cache_dir=cache, lock_file=lock, progress=False)

    assert path == (cache / tiny.filename).resolve() and path.read_bytes() == data
    assert not path.with_name(path.name + ".part").exists()
    assert json.loads(lock.read_text()) == {"tiny": {"url": tiny.url, "sha256": sha, "size": len(data)}}
    # Only the file (and the download mutex) in the cache: no digest sidecar beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == [f".{tiny.filename}.lck", tiny.filename]
    assert len(server.requests) == 1

    server.stop()  # a second use must not touch the network
    assert fetch("tiny", cache_dir=cache, lock_file=lock, progress=False) == path
    assert fetch("tiny", cache_dir=cache, lock_file=lock, offline=True) == path


def test_resume_sends_range_request_and_completes_file(tmp_path, server, payload, tiny):
    _, data, sha = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    half = len(data) // 2
    (cache / (tiny.filename + ".part")).write_bytes(data[:half])

    path = fetch("tiny", cache_dir=cache, progress=False)

    assert server.requests == [(f"/{tiny.filename}", f"bytes={half}-")]
    assert path.read_bytes() == data
    assert checkpoints.file_sha256(path) == sha


def test_server_ignoring_range_gives_fresh_correct_download(tmp_path, server, payload, tiny):
    _, data, _ = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (tiny.filename + ".part")).write_bytes(data[:100])
    server.httpd.ignore_range = True

    path = fetch("tiny", cache_dir=cache, progress=False)

    assert server.requests[0][1] == "bytes=100-"
    assert path.read_bytes() == data


def test_complete_part_file_is_restarted_after_416(tmp_path, server, payload, tiny):
    _, data, _ = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / (tiny.filename + ".part")).write_bytes(data)  # downloaded, but killed before the rename

    assert fetch("tiny", cache_dir=cache, progress=False).read_bytes() == data
    assert [r[1] for r in server.requests] == [f"bytes={len(data)}-", None]


def test_lock_with_other_sha256_is_an_error_and_nothing_is_put_in_place(tmp_path, server, payload, tiny):
    _, data, sha = payload
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    wrong = hashlib.sha256(b"another file").hexdigest()
    lock.write_text(json.dumps({"tiny": {"url": tiny.url, "sha256": wrong, "size": len(data)}}))

    with pytest.raises(ChecksumError) as err:
        fetch("tiny", cache_dir=cache, lock_file=lock, progress=False)

    message = str(err.value)
    assert wrong in message and sha in message and str(lock) in message and "delete the entry 'tiny'" in message
    assert not (cache / tiny.filename).exists() and not (cache / (tiny.filename + ".part")).exists()
    assert json.loads(lock.read_text())["tiny"]["sha256"] == wrong  # the lock is never rewritten silently


def test_local_path_is_verified_but_never_copied_or_deleted(tmp_path, payload, tiny):
    served, data, _ = payload
    lock = tmp_path / "lock.json"
    assert fetch("tiny", lock_file=lock, local_path=served) == served

    corrupt = tmp_path / "my_tiny.pth"
    corrupt.write_bytes(data[:-10] + b"0123456789")
    with pytest.raises(ChecksumError, match=re.escape(str(corrupt))):
        fetch("tiny", lock_file=lock, local_path=corrupt)
    assert corrupt.exists()
    with pytest.raises(CheckpointError, match="does not exist"):
        fetch("tiny", local_path=tmp_path / "absent.pth")


def test_truncated_cached_file_is_redownloaded_or_reported_offline(tmp_path, server, payload, tiny):
    _, data, _ = payload
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    path = fetch("tiny", cache_dir=cache, lock_file=lock, progress=False)
    with open(path, "r+b") as f:
        f.truncate(len(data) - 1000)

    with pytest.raises(ChecksumError) as err:
        fetch("tiny", cache_dir=cache, lock_file=lock, offline=True)
    assert str(path) in str(err.value) and "offline" in str(err.value)
    assert path.stat().st_size == len(data) - 1000  # reported, not deleted

    assert fetch("tiny", cache_dir=cache, lock_file=lock, progress=False).read_bytes() == data
    assert len(server.requests) == 2


def test_corrupt_cached_file_without_lock_fails_hash_prefix_and_is_redownloaded(tmp_path, server, payload, tiny):
    _, data, _ = payload
    cache = tmp_path / "cache"
    path = fetch("tiny", cache_dir=cache, progress=False)
    path.write_bytes(b"x" * len(data))  # same size, wrong bytes: only the hash can tell

    assert fetch("tiny", cache_dir=cache, progress=False).read_bytes() == data
    assert len(server.requests) == 2


def test_stream_shorter_than_content_length_is_an_error_and_resumes_later(tmp_path, server, payload, tiny):
    _, data, _ = payload
    cache = tmp_path / "cache"
    server.httpd.cut.add(tiny.filename)

    with pytest.raises(CheckpointError) as err:
        fetch("tiny", cache_dir=cache, progress=False)
    assert "truncated" in str(err.value) and tiny.url in str(err.value)
    part = cache.resolve() / (tiny.filename + ".part")
    assert str(part) in str(err.value)
    assert not (cache / tiny.filename).exists() and part.stat().st_size == len(data) // 2

    server.httpd.cut.clear()
    assert fetch("tiny", cache_dir=cache, progress=False).read_bytes() == data
    assert server.requests[-1][1] == f"bytes={len(data) // 2}-"


def test_missing_url_names_checkpoint_url_and_manual_hint(tmp_path, server, monkeypatch):
    url = server.url("nowhere.pt")
    monkeypatch.setitem(REGISTRY, "ghost", Checkpoint("ghost", url, "nowhere.pt"))
    with pytest.raises(CheckpointError) as err:
        fetch("ghost", cache_dir=tmp_path / "cache", progress=False)
    message = str(err.value)
    assert "404" in message and url in message and "'ghost'" in message and "by hand" in message

    server.stop()
    with pytest.raises(CheckpointError, match="cannot reach"):
        fetch("ghost", cache_dir=tmp_path / "cache", progress=False)


def test_offline_without_cache_names_expected_path(tmp_path, tiny):
    with pytest.raises(CheckpointError) as err:
        fetch("tiny", cache_dir=tmp_path / "cache", offline=True)
    assert str((tmp_path / "cache").resolve() / tiny.filename) in str(err.value) and tiny.url in str(err.value)


def test_unknown_name_and_malformed_lock_are_clear_errors(tmp_path, tiny):
    with pytest.raises(CheckpointError, match="unknown checkpoint 'nope'.*resnet50_v2"):
        fetch("nope")
    lock = tmp_path / "lock.json"
    lock.write_text("{not json")
    with pytest.raises(CheckpointError, match=re.escape(str(lock))):
        fetch("tiny", cache_dir=tmp_path, lock_file=lock)


def test_digest_record_is_reused_until_file_changes(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"a" * 1000)
    while time.time_ns() - path.stat().st_ctime_ns < checkpoints.RACY_NS:  # see RACY_NS
        time.sleep(0.05)
    cache = tmp_path / "cache"
    first = checkpoints.file_sha256(path, cache)
    [record_file] = (cache / ".verified").iterdir()
    record = json.loads(record_file.read_text())
    assert first == hashlib.sha256(b"a" * 1000).hexdigest() == record["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob.bin", "cache"]  # nothing beside the file
    # A forged record is believed while the stat key matches: proof the hash is not recomputed.
    record_file.write_text(json.dumps({**record, "sha256": "cached"}))
    assert checkpoints.file_sha256(path, cache) == "cached"
    assert checkpoints.file_sha256(path, cache, rehash=True) == first
    path.write_bytes(b"b" * 999)
    assert checkpoints.file_sha256(path, cache) == hashlib.sha256(b"b" * 999).hexdigest()


def test_cli_fetch_and_list(tmp_path, capsys, payload, tiny):
    from offshelf.cli import main as cli_main

    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    assert cli_main(["checkpoints", "fetch", "tiny", "--cache", str(cache), "--lock", str(lock)]) == 0
    assert capsys.readouterr().out.strip() == str(cache.resolve() / tiny.filename)
    assert cli_main(["checkpoints", "list", "--cache", str(cache)]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^tiny\s+cached", listing, re.M) and "resnet50_v2" in listing
    assert cli_main(["checkpoints", "fetch", "nope", "--cache", str(cache)]) == 1
    assert "unknown checkpoint" in capsys.readouterr().err


def test_module_runs_as_script():
    result = subprocess.run([sys.executable, "-m", "offshelf", "checkpoints", "list"], capture_output=True, text=True,
                            check=True)
    assert "edm_imagenet64_cond" in result.stdout


def test_default_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("OFFSHELF_CACHE", str(tmp_path))
    assert checkpoints.default_cache_dir() == tmp_path
    monkeypatch.delenv("OFFSHELF_CACHE")
    assert checkpoints.default_cache_dir() == Path.home() / ".cache" / "offshelf"


PAPER_FILES = {
    "adm_imagenet128_cond_diffusion": "128x128_diffusion.pt",
    "adm_imagenet128_classifier": "128x128_classifier.pt",
    "adm_imagenet256_uncond_diffusion": "256x256_diffusion_uncond.pt",
    "adm_imagenet256_cond_diffusion": "256x256_diffusion.pt",
    "edm_imagenet64_cond": "edm-imagenet-64x64-cond-adm.pkl",
    "resnet50_v2": "resnet50-11ad3fa6.pth",
    "resnet101_v2": "resnet101-cd907fc2.pth",
    "dit_xl2_256": "DiT-XL-2-256x256.pt",
    "ref_imagenet128": "VIRTUAL_imagenet128_labeled.npz",
    "ref_imagenet256": "VIRTUAL_imagenet256_labeled.npz",
    "ref_imagenet64_edm": "imagenet-64x64.npz",
    "inception_cleanfid_legacy_tf": "inception-2015-12-05.pt",
    "inception_pytorch_fid": "pt_inception-2015-12-05-6726825d.pth",
}


def test_registry_holds_every_paper_file_with_consistent_names_and_prefixes():
    for name, filename in PAPER_FILES.items():
        checkpoint = REGISTRY[name]
        assert checkpoint.filename == filename and checkpoint.url.startswith("https://")
        assert checkpoint.url.rsplit("/", 1)[-1] == filename and checkpoint.license
        assert checkpoint.hash_prefix == checkpoints.hash_prefix_from_filename(filename)
    assert REGISTRY["resnet50_v2"].hash_prefix == "11ad3fa6"
    assert REGISTRY["inception_pytorch_fid"].hash_prefix == "6726825d"
    assert "CC BY-NC-SA" in REGISTRY["edm_imagenet64_cond"].license
    assert "CC BY-NC 4.0" in REGISTRY["dit_xl2_256"].license


def test_inception_urls_match_the_installed_clean_fid():
    cleanfid_helpers = pytest.importorskip("cleanfid.downloads_helper")
    cleanfid_pytorch = pytest.importorskip("cleanfid.inception_pytorch")
    assert REGISTRY["inception_cleanfid_legacy_tf"].url == cleanfid_helpers.inception_url
    assert REGISTRY["inception_pytorch_fid"].url == cleanfid_pytorch.FID_WEIGHTS_URL


def test_parallel_fetches_download_once_and_share_the_lock(tmp_path, server, payload, tiny, monkeypatch):
    """Parallel workflow jobs: the per-file mutex makes the second fetch wait and reuse the cache."""
    _, data, sha = payload
    other = Checkpoint("tiny_copy", tiny.url, "tiny_copy.pth", license="test")
    monkeypatch.setitem(REGISTRY, "tiny_copy", other)
    cache, lock = tmp_path / "cache", tmp_path / "lock.json"
    results, errors = [], []

    def job(name):
        try:
            results.append(fetch(name, cache_dir=cache, lock_file=lock, progress=False))
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=job, args=(name,)) for name in ["tiny", "tiny", "tiny_copy", "tiny_copy"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors and len(results) == 4 and all(path.read_bytes() == data for path in results)
    assert len(server.requests) == 2  # one download per cache file
    assert {name: entry["sha256"] for name, entry in json.loads(lock.read_text()).items()} == {
        "tiny": sha, "tiny_copy": sha}

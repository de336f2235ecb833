"""wbc.data.fetch.fetch and `wbc download` against a local HTTP server with injected faults (offline),
and the checksum lock (trust on first use). Every test pins into its own temporary lock file."""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from wbc.apps import cli
from wbc.data import fetch, pins, sources
from wbc.core.errors import ChecksumError, ConfigError, DownloadError

BODY = hashlib.sha256(b"seed").digest() * 10_000 + b"tail"  # 320,004 bytes, several chunks
BODY_SHA = hashlib.sha256(BODY).hexdigest()
FAST = {"timeout": 5, "retries": 3, "backoff": 0.01, "progress": False}
PBC_SHA = "aaa91c6d1cb1922c28578f1156d110a9322f8100622e15ebe4bf5f2315acdeaf"  # ../shared/data/pbc/README.md
OTHER = BODY[:-4] + b"TAIL"  # what a changed upstream serves: same size, other bytes
OTHER_SHA = hashlib.sha256(OTHER).hexdigest()
SHA_A, SHA_B = "ab" * 32, "cd" * 32
ROOT = Path(__file__).resolve().parents[1]
PROJECT_LOCK = ROOT / "sources.lock.yaml"  # the committed lock, beside dvc.lock


@dataclass
class Route:
    """What the server answers on one path: one action per request, the last one repeats."""

    actions: list[str]
    body: bytes = BODY


@dataclass
class FaultServer:
    """State shared by the handler threads: routes, a request log and a stop event."""

    url: str = ""
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, dict]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def requests_to(self, path: str) -> list[dict]:
        return [headers for p, headers in self.log if p == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:
        state: FaultServer = self.server.state
        with state.lock:
            state.log.append((self.path, dict(self.headers)))
            route = state.routes.get(self.path)
            action = "status:404" if route is None else (
                route.actions.pop(0) if len(route.actions) > 1 else route.actions[0])
        body = route.body if route else b""
        if action.startswith("status:"):
            return self._status(int(action.split(":")[1]))
        start = self._range_start() if action != "ignore_range" else 0
        if start >= len(body) > 0:
            return self._send(416, b"", {"Content-Range": f"bytes */{len(body)}"})
        getattr(self, "_" + action)(body, start)

    def _range_start(self) -> int:
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        return int(match.group(1)) if match else 0

    def _send(self, code: int, payload: bytes, headers: dict, length: int | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(payload) if length is None else length))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def _status(self, code: int) -> None:
        self._send(code, b"error page", {})

    def _partial_headers(self, body: bytes, start: int) -> tuple[int, dict]:
        if start:
            return 206, {"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
        return 200, {}

    def _full(self, body: bytes, start: int) -> None:
        code, headers = self._partial_headers(body, start)
        self._send(code, body[start:], headers)

    def _ignore_range(self, body: bytes, start: int) -> None:
        self._send(200, body, {})

    def _bad_range(self, body: bytes, start: int) -> None:
        """A 206 whose Content-Range does not start where the client asked."""
        self._send(206, body, {"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"})

    def _drop(self, body: bytes, start: int) -> None:
        """Announce the whole remaining body, send part of it, then close the connection."""
        code, headers = self._partial_headers(body, start)
        rest = body[start:]
        self._send(code, rest[: len(rest) // 3], headers, length=len(rest))
        self.close_connection = True

    def _slow(self, body: bytes, start: int) -> None:
        """Send headers and a few bytes, then stall (until the test ends, at most 5 s)."""
        code, headers = self._partial_headers(body, start)
        self._send(code, body[start:start + 10], headers, length=len(body) - start)
        self.wfile.flush()
        self.server.state.stop.wait(5)
        self.close_connection = True


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Clients hang up on purpose in these tests (bad Content-Range, timeouts): stay quiet."""


@pytest.fixture
def server():
    """A threaded HTTP server on 127.0.0.1 (ephemeral port), shut down after the test."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    state = FaultServer(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        state.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture(autouse=True)
def lock_file(tmp_path_factory, monkeypatch) -> Path:
    """The checksum lock of the test: a fresh file, never the packaged src/wbc/data/sources.lock.yaml."""
    path = tmp_path_factory.mktemp("lock") / "sources.lock.yaml"
    monkeypatch.setattr(pins, "lock_path", lambda: path)
    return path


def closed_port_url(path: str = "/x.zip") -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def make_source(url: str, *, size: int | None = len(BODY), sha256: str | None = BODY_SHA) -> dict:
    return {"id": "demo", "title": "demo", "url": url, "file": "demo.zip", "format": "zip", "size": size,
            "sha256": sha256, "classes": {"b": "basophil"}, "role": "pool", "split": "train"}


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_plain_download(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw", **FAST)
    assert result.path == tmp_path / "raw" / "demo.zip"
    assert result.path.read_bytes() == BODY
    assert (result.sha256, result.size, result.origin) == (BODY_SHA, len(BODY), server.url + "/demo.zip")
    assert files_in(tmp_path / "raw") == ["demo.zip"]


def test_sha256_computed_when_registry_does_not_know_it(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip", size=None, sha256=None), tmp_path, **FAST)
    assert result.sha256 == BODY_SHA and result.size == len(BODY)


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    first, second = server.requests_to("/demo.zip")
    assert "Range" not in first
    offset = int(re.fullmatch(r"bytes=(\d+)-", second["Range"]).group(1))
    assert 0 < offset < len(BODY)
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA
    assert files_in(tmp_path) == ["demo.zip"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "ignore_range"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert "Range" in server.requests_to("/demo.zip")[1]
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA


def test_bad_content_range_restarts(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "bad_range", "full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    reqs = server.requests_to("/demo.zip")
    assert len(reqs) == 3 and "Range" in reqs[1] and "Range" not in reqs[2]
    assert result.sha256 == BODY_SHA


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip.part").write_bytes(BODY[:1000])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert [h.get("Range") for h in server.requests_to("/demo.zip")] == ["bytes=1000-"]
    assert result.path.read_bytes() == BODY and files_in(tmp_path) == ["demo.zip"]


def test_complete_partial_file_answered_416(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip.part").write_bytes(BODY)
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.sha256 == BODY_SHA and files_in(tmp_path) == ["demo.zip"]


def test_503_is_retried(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:503", "status:502", "full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert len(server.requests_to("/demo.zip")) == 3
    assert result.sha256 == BODY_SHA


def test_5xx_retries_exhausted(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:503"])
    with pytest.raises(DownloadError, match="HTTP 503.*gave up after 3 tries"):
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **{**FAST, "retries": 2})
    assert len(server.requests_to("/demo.zip")) == 3
    assert files_in(tmp_path) == []


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404 Not Found") as info:
        fetch.fetch(make_source(server.url + "/gone.zip"), tmp_path, **FAST)
    assert server.url + "/gone.zip" in str(info.value)
    assert len(server.requests_to("/gone.zip")) == 1
    assert files_in(tmp_path) == []


def test_403_is_not_retried(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:403"])
    with pytest.raises(DownloadError, match="HTTP 403"):
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert len(server.requests_to("/demo.zip")) == 1


@pytest.mark.parametrize("size, sha, expected", [
    (len(BODY), "0" * 64, f"expected sha256 {'0' * 64} ({len(BODY)} bytes)"),
    (len(BODY) + 1, None, f"expected sha256 not known yet ({len(BODY) + 1} bytes)"),
])
def test_checksum_mismatch_deletes_the_file(server, tmp_path, lock_file, size, sha, expected):
    server.routes["/demo.zip"] = Route(["full"])
    with pytest.raises(ChecksumError) as info:
        fetch.fetch(make_source(server.url + "/demo.zip", size=size, sha256=sha), tmp_path, **FAST)
    msg = str(info.value)
    assert f"{expected}, published in sources.yaml; got sha256 {BODY_SHA} ({len(BODY)} bytes)" in msg
    assert "The download was deleted" in msg and "update size and sha256 of demo in sources.yaml" in msg
    assert files_in(tmp_path) == []  # neither demo.zip nor demo.zip.part
    assert not lock_file.exists()  # nothing pinned


def test_slow_server_times_out_without_partial_output(server, tmp_path):
    server.routes["/demo.zip"] = Route(["slow"])
    with pytest.raises(DownloadError, match=r"timed out.*gave up after 3 tries") as info:
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path,
                      timeout=0.3, retries=2, backoff=0.01, progress=False)
    assert "dvc repro -S data.mirror=" in str(info.value)
    assert len(server.requests_to("/demo.zip")) == 3
    assert files_in(tmp_path) == []


def test_unreachable_origin_explains_the_mirror(tmp_path):
    url = closed_port_url("/demo.zip")
    with pytest.raises(DownloadError) as info:
        fetch.fetch(make_source(url), tmp_path, **{**FAST, "retries": 1})
    msg = str(info.value)
    assert url in msg and "refused" in msg.lower()
    assert "put demo.zip in a folder" in msg.lower() and "wbc download demo --mirror" in msg
    assert files_in(tmp_path) == []


def test_existing_verified_file_is_reused(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip").write_bytes(BODY)
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.reused and result.sha256 == BODY_SHA
    assert server.log == []


def test_existing_bad_file_fails_against_the_published_checksum(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    bad = b"x" * len(BODY)
    (tmp_path / "demo.zip").write_bytes(bad)
    with pytest.raises(ChecksumError) as info:
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    msg = str(info.value)
    assert msg.startswith(f"{tmp_path / 'demo.zip'}: checksum mismatch: expected sha256 {BODY_SHA}")
    assert f"got sha256 {hashlib.sha256(bad).hexdigest()}" in msg and "published in sources.yaml" in msg
    assert (tmp_path / "demo.zip").read_bytes() == bad  # the user's file is kept, not silently replaced
    assert server.log == []


def test_generated_source_is_not_fetched_nor_pinned(tmp_path, lock_file):
    with pytest.raises(ConfigError, match="generated"):
        fetch.fetch(sources.get_source("synth_pbc"), tmp_path)
    assert not lock_file.exists()


# --------------------------------------------------------------------------- mirrors


@pytest.mark.parametrize("layout", ["flat", "per_source"])
def test_mirror_folder(server, tmp_path, layout):
    mirror = tmp_path / "mirror"
    folder = mirror if layout == "flat" else mirror / "demo"
    folder.mkdir(parents=True)
    (folder / "demo.zip").write_bytes(BODY)
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw", mirror=mirror, **FAST)
    assert result.origin == str(folder / "demo.zip")
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA
    assert server.log == []  # the origin was not contacted
    assert files_in(tmp_path / "raw") == ["demo.zip"]


def test_mirror_folder_without_the_file_falls_back_to_origin(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "mirror").mkdir()
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw",
                           mirror=tmp_path / "mirror", **FAST)
    assert result.origin == server.url + "/demo.zip" and result.sha256 == BODY_SHA


def test_mirror_and_origin_both_failing_are_both_named(tmp_path):
    url = closed_port_url("/demo.zip")
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError) as info:
        fetch.fetch(make_source(url), tmp_path / "raw", mirror=tmp_path / "mirror", **{**FAST, "retries": 0})
    msg = str(info.value)
    assert str(tmp_path / "mirror" / "demo.zip") in msg and str(tmp_path / "mirror" / "demo" / "demo.zip") in msg
    assert url in msg and "refused" in msg.lower()
    assert files_in(tmp_path / "raw") == []


def test_bad_mirror_file_fails_checksum_and_leaves_nothing(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "demo.zip").write_bytes(BODY[:-1] + b"X")
    with pytest.raises(ChecksumError, match=f"demo.zip from {tmp_path / 'mirror' / 'demo.zip'}: checksum "
                                             f"mismatch: expected sha256 {BODY_SHA}"):
        fetch.fetch(make_source(closed_port_url()), tmp_path / "raw", mirror=tmp_path / "mirror", **FAST)
    assert files_in(tmp_path / "raw") == []


def test_http_mirror(server, tmp_path):
    server.routes["/mirror/demo.zip"] = Route(["drop", "full"])
    result = fetch.fetch(make_source(server.url + "/origin/demo.zip"), tmp_path,
                           mirror=server.url + "/mirror/", **FAST)
    assert result.origin == server.url + "/mirror/demo.zip" and result.sha256 == BODY_SHA
    assert server.requests_to("/origin/demo.zip") == []
    assert "Range" in server.requests_to("/mirror/demo.zip")[1]


def test_http_mirror_404_falls_back_to_origin(server, tmp_path):
    server.routes["/origin/demo.zip"] = Route(["full"])
    result = fetch.fetch(make_source(server.url + "/origin/demo.zip"), tmp_path,
                           mirror=server.url + "/mirror", **FAST)
    assert result.origin == server.url + "/origin/demo.zip"
    assert len(server.requests_to("/mirror/demo.zip")) == 1


def test_real_pbc_entry_resolves_in_the_shared_mirror(shared_dir, tmp_path, lock_file):
    mirror = shared_dir / "data" / "pbc"
    result = fetch.fetch(sources.get_source("pbc"), tmp_path, mirror=mirror, progress=False)
    assert result.origin == str(mirror / "PBC_dataset_normal_DIB.zip")
    assert result.sha256 == PBC_SHA
    assert result.size == (mirror / "PBC_dataset_normal_DIB.zip").stat().st_size
    assert files_in(tmp_path) == ["PBC_dataset_normal_DIB.zip"]
    assert result.pinned and pins.load_lock(lock_file)["pbc"] == {
        "file": "PBC_dataset_normal_DIB.zip", "size": result.size, "sha256": PBC_SHA}


# --------------------------------------------------------------------------- command


@pytest.fixture
def test_registry(server, monkeypatch):
    """Make the `wbc download` command see a registry whose `demo` source lives on the test server."""
    reg = {
        "labels": ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"],
        "sources": {"demo": make_source(server.url + "/demo.zip"),
                    "gen": {"title": "g", "generator": "synthetic", "file": "g.zip", "format": "zip",
                            "classes": {"b": "basophil"}, "role": "pool", "split": "train"}},
        "profiles": {"both": {"sources": ["gen", "demo"], "split": {"val": 0.1, "test": 0.1}}},
    }
    for entry in reg["sources"].values():
        entry.pop("id", None)
    assert sources.validate_registry(reg) == []
    monkeypatch.setattr(sources, "load_registry", lambda path=None: reg)
    return reg


def test_download_command(server, test_registry, tmp_path, capsys):
    server.routes["/demo.zip"] = Route(["status:503", "full"])
    code = cli.main(["download", "both", "--dest", str(tmp_path / "raw"), "--backoff", "0.01", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "gen: generated" in out and f"demo: {tmp_path / 'raw' / 'demo.zip'}" in out and BODY_SHA in out
    assert (tmp_path / "raw" / "demo.zip").read_bytes() == BODY


def test_download_command_errors_are_one_line(server, test_registry, tmp_path, capsys):
    assert cli.main(["download", "nope", "--dest", str(tmp_path)]) == 2
    assert "unknown source or profile 'nope'" in capsys.readouterr().err
    assert cli.main(["download", "demo", "--dest", str(tmp_path), "--no-progress"]) == 2  # route not set: 404
    err = capsys.readouterr().err
    assert err.startswith("wbc download: error:") and "HTTP 404" in err and err.count("\n") == 1


def test_next_origin_url_is_tried(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    source = make_source(closed_port_url("/demo.zip"))
    source["urls"] = [server.url + "/demo.zip"]
    result = fetch.fetch(source, tmp_path, **{**FAST, "retries": 0})
    assert result.origin == server.url + "/demo.zip" and result.sha256 == BODY_SHA


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"retries": -1}, {"backoff": -1.0}])
def test_bad_download_params(tmp_path, bad):
    with pytest.raises(ConfigError, match="download needs timeout > 0"):
        fetch.fetch(make_source(closed_port_url()), tmp_path, **{**FAST, **bad})
    assert files_in(tmp_path) == []


# --------------------------------------------------------------------------- checksum lock (trust on first use)


def unpublished(url: str, sid: str = "demo") -> dict:
    """A source like the real ones: no published size/sha256."""
    return {**make_source(url, size=None, sha256=None), "id": sid, "file": f"{sid}.zip"}


def pin_demo(server, raw: Path) -> dict:
    """First download of the unpublished `demo` source into ``raw`` (records its pin)."""
    server.routes["/demo.zip"] = Route(["full"])
    source = unpublished(server.url + "/demo.zip")
    assert fetch.fetch(source, raw, **FAST).pinned
    return source


def test_first_download_records_the_pin(server, tmp_path, lock_file):
    source = pin_demo(server, tmp_path / "raw")
    assert lock_file == pins.lock_path() and lock_file.parent != tmp_path / "raw"
    assert pins.load_lock(lock_file) == {"demo": {"file": "demo.zip", "size": len(BODY), "sha256": BODY_SHA}}
    again = fetch.fetch(source, tmp_path / "raw", **FAST)  # reuse: verified against the pin, not re-pinned
    assert again.reused and not again.pinned and len(server.log) == 1


def test_lock_is_written_deterministically(server, tmp_path, lock_file):
    server.routes["/zeta.zip"] = Route(["full"])
    server.routes["/alpha.zip"] = Route(["full"], body=OTHER)
    for sid in ("zeta", "alpha"):
        fetch.fetch(unpublished(f"{server.url}/{sid}.zip", sid), tmp_path / "raw", **FAST)
    text = lock_file.read_text(encoding="utf-8")
    assert text == pins.LOCK_HEADER + (
        f"alpha:\n  file: alpha.zip\n  sha256: {OTHER_SHA}\n  size: {len(OTHER)}\n"
        f"zeta:\n  file: zeta.zip\n  sha256: {BODY_SHA}\n  size: {len(BODY)}\n")
    other = tmp_path / "other.lock.yaml"
    pins.save_lock(dict(reversed(list(pins.load_lock(lock_file).items()))), other)
    assert other.read_bytes() == lock_file.read_bytes()


@pytest.mark.parametrize("damage", ["tampered", "truncated"])
def test_damaged_file_in_raw_fails_against_the_pin(server, tmp_path, lock_file, damage):
    source = pin_demo(server, tmp_path / "raw")
    path = tmp_path / "raw" / "demo.zip"
    bad = BODY[:1000] if damage == "truncated" else BODY[:-1] + b"X"
    path.write_bytes(bad)
    with pytest.raises(ChecksumError) as info:
        fetch.fetch(source, tmp_path / "raw", **FAST)
    msg = str(info.value)
    assert msg.startswith(f"{path}: checksum mismatch: expected sha256 {BODY_SHA} ({len(BODY)} bytes), "
                          f"pinned in {lock_file} when first fetched; "
                          f"got sha256 {hashlib.sha256(bad).hexdigest()} ({len(bad)} bytes).")
    assert f"`rm {path}`, then `wbc download demo`" in msg and "`wbc download --accept-new demo`" in msg
    assert path.read_bytes() == bad and len(server.log) == 1  # kept for inspection; nothing downloaded


def test_changed_upstream_fails_against_the_pin(server, tmp_path, lock_file):
    source = pin_demo(server, tmp_path / "first")
    server.routes["/demo.zip"] = Route(["full"], body=OTHER)
    with pytest.raises(ChecksumError) as info:
        fetch.fetch(source, tmp_path / "raw", **FAST)
    msg = str(info.value)
    assert msg.startswith(f"demo.zip from {server.url}/demo.zip: checksum mismatch: expected sha256 {BODY_SHA}")
    assert f"got sha256 {OTHER_SHA} ({len(OTHER)} bytes). The download was deleted" in msg
    assert "re-pin it with `wbc download --accept-new demo`" in msg
    assert files_in(tmp_path / "raw") == []
    assert pins.load_lock(lock_file)["demo"]["sha256"] == BODY_SHA  # the pin is unchanged


def test_accept_new_repins_after_a_legitimate_change(server, tmp_path, lock_file):
    source = pin_demo(server, tmp_path / "raw")
    server.routes["/demo.zip"] = Route(["full"], body=OTHER)
    result = fetch.fetch(source, tmp_path / "raw", accept_new=True, **FAST)
    assert not result.reused and result.pinned and result.sha256 == OTHER_SHA
    assert (tmp_path / "raw" / "demo.zip").read_bytes() == OTHER
    assert pins.load_lock(lock_file)["demo"] == {"file": "demo.zip", "size": len(OTHER), "sha256": OTHER_SHA}


def test_mirror_copy_is_verified_against_the_pin(server, tmp_path):
    source = pin_demo(server, tmp_path / "first")
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "demo.zip").write_bytes(OTHER)
    with pytest.raises(ChecksumError, match=f"demo.zip from {tmp_path / 'mirror' / 'demo.zip'}: checksum mismatch: "
                                            f"expected sha256 {BODY_SHA}.*got sha256 {OTHER_SHA}"):
        fetch.fetch(source, tmp_path / "raw", mirror=tmp_path / "mirror", **FAST)
    assert files_in(tmp_path / "raw") == []


def test_unpinned_file_already_in_raw_is_pinned_on_first_use(server, tmp_path, lock_file):
    (tmp_path / "demo.zip").write_bytes(BODY)
    result = fetch.fetch(unpublished(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.reused and result.pinned and server.log == []
    assert pins.load_lock(lock_file)["demo"]["sha256"] == BODY_SHA


def test_published_checksum_is_verified_from_the_first_download_and_not_pinned(server, tmp_path, lock_file):
    server.routes["/demo.zip"] = Route(["full"], body=OTHER)
    with pytest.raises(ChecksumError, match=f"expected sha256 {BODY_SHA} .*published in sources.yaml; "
                                            f"got sha256 {OTHER_SHA}"):
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    server.routes["/demo.zip"] = Route(["full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.sha256 == BODY_SHA and not result.pinned and not lock_file.exists()


def test_pin_disagreeing_with_the_published_checksum_is_an_error(server, tmp_path, lock_file):
    pins.save_lock({"demo": {"file": "demo.zip", "size": len(BODY), "sha256": OTHER_SHA}}, lock_file)
    with pytest.raises(ConfigError, match=f"the pin of demo disagrees with the registry: pins sha256 {OTHER_SHA} "
                                          f"but sources.yaml publishes {BODY_SHA}.*--accept-new demo"):
        fetch.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert server.log == []


def test_size_only_published_source_pins_its_sha256(server, tmp_path, lock_file):
    server.routes["/demo.zip"] = Route(["full"])
    result = fetch.fetch(make_source(server.url + "/demo.zip", sha256=None), tmp_path, **FAST)
    assert result.pinned and pins.load_lock(lock_file)["demo"]["sha256"] == BODY_SHA


def test_download_command_accept_new_and_one_line_checksum_error(server, test_registry, tmp_path, lock_file, capsys):
    test_registry["sources"]["demo"].update(size=None, sha256=None)
    raw = tmp_path / "raw"
    server.routes["/demo.zip"] = Route(["full"])
    assert cli.main(["download", "demo", "--dest", str(raw), "--no-progress"]) == 0
    assert f"pinned in {lock_file}" in capsys.readouterr().out
    (raw / "demo.zip").write_bytes(OTHER)
    assert cli.main(["download", "demo", "--dest", str(raw), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wbc download: error: ") and err.count("\n") == 1
    assert f"expected sha256 {BODY_SHA}" in err and f"got sha256 {OTHER_SHA}" in err
    server.routes["/demo.zip"] = Route(["full"], body=OTHER)
    assert cli.main(["download", "demo", "--dest", str(raw), "--no-progress", "--accept-new"]) == 0
    assert f"from {server.url}/demo.zip, pinned in {lock_file}" in capsys.readouterr().out
    assert yaml.safe_load(lock_file.read_text())["demo"]["sha256"] == OTHER_SHA


# --------------------------------------------------------------------------- the lock file itself


def test_project_lock_sits_beside_dvc_lock_and_agrees_with_the_registry():
    assert PROJECT_LOCK.is_file() and (ROOT / "dvc.lock").is_file()
    assert not Path(sources.__file__).with_name("sources.lock.yaml").exists()  # never inside the package
    assert PROJECT_LOCK.read_text(encoding="utf-8").startswith(pins.LOCK_HEADER)
    assert pins.lock_problems(pins.load_lock(PROJECT_LOCK), sources.load_registry()) == []


def test_lock_path_is_the_project_root_found_from_any_subfolder(tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.chdir(project / "data" / "raw")
    assert pins.project_root() == project.resolve()  # pins.lock_path() is project_root() / LOCK_FILE
    bare = tmp_path / "bare"  # no project marker up to tmp_path: the working directory
    bare.mkdir()
    assert pins.project_root(bare) in (bare.resolve(), *bare.resolve().parents)


def test_download_command_writes_the_pin_to_the_given_lock(server, test_registry, tmp_path, monkeypatch, capsys):
    from wbc.apps import cli

    test_registry["sources"]["demo"].update(size=None, sha256=None)
    server.routes["/demo.zip"] = Route(["full"])
    monkeypatch.chdir(tmp_path)
    lock = tmp_path / "my.lock.yaml"
    assert cli.main(["download", "demo", "--dest", str(tmp_path / "raw"), "--lock", str(lock), "--no-progress",
                     "--retries", "0"]) == 0
    assert pins.load_lock(lock)["demo"]["sha256"] == BODY_SHA and f"pinned in {lock}" in capsys.readouterr().out


def test_missing_lock_is_empty(tmp_path):
    assert pins.load_lock(tmp_path / "none.yaml") == {}


def test_save_lock_sorts_and_round_trips(tmp_path):
    recorded = {"b": {"size": 2, "sha256": SHA_B, "file": "b.zip"}, "a": {"sha256": SHA_A, "file": "a.zip", "size": 1}}
    path = pins.save_lock(recorded, tmp_path / "lock.yaml")
    assert path.read_text(encoding="utf-8") == pins.LOCK_HEADER + (
        f"a:\n  file: a.zip\n  sha256: {SHA_A}\n  size: 1\nb:\n  file: b.zip\n  sha256: {SHA_B}\n  size: 2\n")
    assert pins.load_lock(path) == recorded
    assert [p.name for p in tmp_path.iterdir()] == ["lock.yaml"]  # no temp file left


@pytest.mark.parametrize("text, message", [
    ("a: [unclosed\n", "not valid YAML"),
    ("- a\n", "top level must be a mapping"),
    ("a: {file: a.zip, size: 1}\n", "a: must be a mapping with exactly `file`, `size` and `sha256`"),
    (f"a: {{file: a.zip, size: null, sha256: {SHA_A}}}\n", "a: size and sha256 must not be null"),
    ("a: {file: a.zip, size: 1, sha256: xyz}\n", "a: sha256 must be null or 64 hex digits"),
])
def test_invalid_lock(tmp_path, text, message):
    (tmp_path / "lock.yaml").write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="invalid checksum lock") as info:
        pins.load_lock(tmp_path / "lock.yaml")
    assert message in str(info.value)


def test_lock_problems_against_the_registry():
    reg = {"sources": {"a": make_source("https://example.org/a.zip", size=10, sha256=SHA_A),
                       "g": {"generator": "synthetic", "file": "g.zip"}}}
    recorded = {"a": {"file": "demo.zip", "size": 10, "sha256": SHA_B}, "g": {"file": "g.zip", "size": 1, "sha256": SHA_A},
                "zz": {"file": "zz.zip", "size": 1, "sha256": SHA_A}}
    assert pins.lock_problems(recorded, reg) == [
        f"a: pins sha256 {SHA_B} but sources.yaml publishes {SHA_A}",
        "g: a generated source is never pinned", "zz: not a source of the registry"]


def test_expected_checksum_combines_published_and_pinned():
    entry = {"id": "a", "file": "a.zip", "size": None, "sha256": None}
    assert pins.expected_checksum(entry, {}) == pins.Expected(None, None, published=False, pinned=False)
    pin = {"file": "a.zip", "size": 10, "sha256": SHA_A.upper()}
    assert pins.expected_checksum(entry, {"a": pin}) == pins.Expected(10, SHA_A, False, True)
    assert pins.expected_checksum({**entry, "size": 10}, {"a": pin}) == pins.Expected(10, SHA_A, True, True)
    published = {**entry, "size": 10, "sha256": SHA_A}
    assert pins.expected_checksum(published, {}) == pins.Expected(10, SHA_A, True, False)
    assert pins.expected_checksum(published, {"a": pin}) == pins.Expected(10, SHA_A, True, False)
    with pytest.raises(ConfigError, match="the pin of a disagrees with the registry: pins file 'old.zip'"):
        pins.expected_checksum(entry, {"a": {**pin, "file": "old.zip"}})

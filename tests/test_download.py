"""wbc.sources.fetch and `wbc download` against a local HTTP server with injected faults (offline)."""
from __future__ import annotations

import hashlib
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wbc import cli, sources
from wbc.errors import ChecksumError, ConfigError, DownloadError

BODY = hashlib.sha256(b"seed").digest() * 10_000 + b"tail"  # 320,004 bytes, several chunks
BODY_SHA = hashlib.sha256(BODY).hexdigest()
FAST = {"timeout": 5, "retries": 3, "backoff": 0.01, "progress": False}
PBC_SHA = "aaa91c6d1cb1922c28578f1156d110a9322f8100622e15ebe4bf5f2315acdeaf"  # ../shared/data/pbc/README.md


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
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw", **FAST)
    assert result.path == tmp_path / "raw" / "demo.zip"
    assert result.path.read_bytes() == BODY
    assert (result.sha256, result.size, result.origin) == (BODY_SHA, len(BODY), server.url + "/demo.zip")
    assert files_in(tmp_path / "raw") == ["demo.zip"]


def test_sha256_computed_when_registry_does_not_know_it(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    result = sources.fetch(make_source(server.url + "/demo.zip", size=None, sha256=None), tmp_path, **FAST)
    assert result.sha256 == BODY_SHA and result.size == len(BODY)


def test_dropped_connection_resumes_with_range(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "full"])
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    first, second = server.requests_to("/demo.zip")
    assert "Range" not in first
    offset = int(re.fullmatch(r"bytes=(\d+)-", second["Range"]).group(1))
    assert 0 < offset < len(BODY)
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA
    assert files_in(tmp_path) == ["demo.zip"]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "ignore_range"])
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert "Range" in server.requests_to("/demo.zip")[1]
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA


def test_bad_content_range_restarts(server, tmp_path):
    server.routes["/demo.zip"] = Route(["drop", "bad_range", "full"])
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    reqs = server.requests_to("/demo.zip")
    assert len(reqs) == 3 and "Range" in reqs[1] and "Range" not in reqs[2]
    assert result.sha256 == BODY_SHA


def test_partial_file_from_an_earlier_run_is_resumed(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip.part").write_bytes(BODY[:1000])
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert [h.get("Range") for h in server.requests_to("/demo.zip")] == ["bytes=1000-"]
    assert result.path.read_bytes() == BODY and files_in(tmp_path) == ["demo.zip"]


def test_complete_partial_file_answered_416(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip.part").write_bytes(BODY)
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.sha256 == BODY_SHA and files_in(tmp_path) == ["demo.zip"]


def test_503_is_retried(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:503", "status:502", "full"])
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert len(server.requests_to("/demo.zip")) == 3
    assert result.sha256 == BODY_SHA


def test_5xx_retries_exhausted(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:503"])
    with pytest.raises(DownloadError, match="HTTP 503.*gave up after 3 tries"):
        sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **{**FAST, "retries": 2})
    assert len(server.requests_to("/demo.zip")) == 3
    assert files_in(tmp_path) == []


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404 Not Found") as info:
        sources.fetch(make_source(server.url + "/gone.zip"), tmp_path, **FAST)
    assert server.url + "/gone.zip" in str(info.value)
    assert len(server.requests_to("/gone.zip")) == 1
    assert files_in(tmp_path) == []


def test_403_is_not_retried(server, tmp_path):
    server.routes["/demo.zip"] = Route(["status:403"])
    with pytest.raises(DownloadError, match="HTTP 403"):
        sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert len(server.requests_to("/demo.zip")) == 1


@pytest.mark.parametrize("size, sha, expected, actual", [
    (len(BODY), "0" * 64, "0" * 64, BODY_SHA),
    (len(BODY) + 1, None, str(len(BODY) + 1), str(len(BODY))),
])
def test_checksum_mismatch_deletes_the_file(server, tmp_path, size, sha, expected, actual):
    server.routes["/demo.zip"] = Route(["full"])
    with pytest.raises(ChecksumError) as info:
        sources.fetch(make_source(server.url + "/demo.zip", size=size, sha256=sha), tmp_path, **FAST)
    assert f"expected {expected}" in str(info.value) and f"got {actual}" in str(info.value)
    assert files_in(tmp_path) == []  # neither demo.zip nor demo.zip.part


def test_slow_server_times_out_without_partial_output(server, tmp_path):
    server.routes["/demo.zip"] = Route(["slow"])
    with pytest.raises(DownloadError, match=r"timed out.*gave up after 3 tries") as info:
        sources.fetch(make_source(server.url + "/demo.zip"), tmp_path,
                      timeout=0.3, retries=2, backoff=0.01, progress=False)
    assert "dvc repro -S data.mirror=" in str(info.value)
    assert len(server.requests_to("/demo.zip")) == 3
    assert files_in(tmp_path) == []


def test_unreachable_origin_explains_the_mirror(tmp_path):
    url = closed_port_url("/demo.zip")
    with pytest.raises(DownloadError) as info:
        sources.fetch(make_source(url), tmp_path, **{**FAST, "retries": 1})
    msg = str(info.value)
    assert url in msg and "refused" in msg.lower()
    assert "put demo.zip in a folder" in msg.lower() and "wbc download demo --mirror" in msg
    assert files_in(tmp_path) == []


def test_existing_verified_file_is_reused(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip").write_bytes(BODY)
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert result.reused and result.sha256 == BODY_SHA
    assert server.log == []


def test_existing_bad_file_is_replaced(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "demo.zip").write_bytes(b"x" * len(BODY))
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path, **FAST)
    assert not result.reused and result.path.read_bytes() == BODY
    assert len(server.log) == 1


def test_generated_source_is_not_fetched(tmp_path):
    with pytest.raises(ConfigError, match="generated"):
        sources.fetch(sources.get_source("synth_pbc"), tmp_path)


# --------------------------------------------------------------------------- mirrors


@pytest.mark.parametrize("layout", ["flat", "per_source"])
def test_mirror_folder(server, tmp_path, layout):
    mirror = tmp_path / "mirror"
    folder = mirror if layout == "flat" else mirror / "demo"
    folder.mkdir(parents=True)
    (folder / "demo.zip").write_bytes(BODY)
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw", mirror=mirror, **FAST)
    assert result.origin == str(folder / "demo.zip")
    assert result.path.read_bytes() == BODY and result.sha256 == BODY_SHA
    assert server.log == []  # the origin was not contacted
    assert files_in(tmp_path / "raw") == ["demo.zip"]


def test_mirror_folder_without_the_file_falls_back_to_origin(server, tmp_path):
    server.routes["/demo.zip"] = Route(["full"])
    (tmp_path / "mirror").mkdir()
    result = sources.fetch(make_source(server.url + "/demo.zip"), tmp_path / "raw",
                           mirror=tmp_path / "mirror", **FAST)
    assert result.origin == server.url + "/demo.zip" and result.sha256 == BODY_SHA


def test_mirror_and_origin_both_failing_are_both_named(tmp_path):
    url = closed_port_url("/demo.zip")
    (tmp_path / "mirror").mkdir()
    with pytest.raises(DownloadError) as info:
        sources.fetch(make_source(url), tmp_path / "raw", mirror=tmp_path / "mirror", **{**FAST, "retries": 0})
    msg = str(info.value)
    assert str(tmp_path / "mirror" / "demo.zip") in msg and str(tmp_path / "mirror" / "demo" / "demo.zip") in msg
    assert url in msg and "refused" in msg.lower()
    assert files_in(tmp_path / "raw") == []


def test_bad_mirror_file_fails_checksum_and_leaves_nothing(tmp_path):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "demo.zip").write_bytes(BODY[:-1] + b"X")
    with pytest.raises(ChecksumError, match=f"expected {BODY_SHA}"):
        sources.fetch(make_source(closed_port_url()), tmp_path / "raw", mirror=tmp_path / "mirror", **FAST)
    assert files_in(tmp_path / "raw") == []


def test_http_mirror(server, tmp_path):
    server.routes["/mirror/demo.zip"] = Route(["drop", "full"])
    result = sources.fetch(make_source(server.url + "/origin/demo.zip"), tmp_path,
                           mirror=server.url + "/mirror/", **FAST)
    assert result.origin == server.url + "/mirror/demo.zip" and result.sha256 == BODY_SHA
    assert server.requests_to("/origin/demo.zip") == []
    assert "Range" in server.requests_to("/mirror/demo.zip")[1]


def test_http_mirror_404_falls_back_to_origin(server, tmp_path):
    server.routes["/origin/demo.zip"] = Route(["full"])
    result = sources.fetch(make_source(server.url + "/origin/demo.zip"), tmp_path,
                           mirror=server.url + "/mirror", **FAST)
    assert result.origin == server.url + "/origin/demo.zip"
    assert len(server.requests_to("/mirror/demo.zip")) == 1


def test_real_pbc_entry_resolves_in_the_shared_mirror(shared_dir, tmp_path):
    mirror = shared_dir / "data" / "pbc"
    result = sources.fetch(sources.get_source("pbc"), tmp_path, mirror=mirror, progress=False)
    assert result.origin == str(mirror / "PBC_dataset_normal_DIB.zip")
    assert result.sha256 == PBC_SHA
    assert result.size == (mirror / "PBC_dataset_normal_DIB.zip").stat().st_size
    assert files_in(tmp_path) == ["PBC_dataset_normal_DIB.zip"]


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
    result = sources.fetch(source, tmp_path, **{**FAST, "retries": 0})
    assert result.origin == server.url + "/demo.zip" and result.sha256 == BODY_SHA


@pytest.mark.parametrize("bad", [{"timeout": 0}, {"retries": -1}, {"backoff": -1.0}])
def test_bad_download_params(tmp_path, bad):
    with pytest.raises(ConfigError, match="download needs timeout > 0"):
        sources.fetch(make_source(closed_port_url()), tmp_path, **{**FAST, **bad})
    assert files_in(tmp_path) == []

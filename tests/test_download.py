"""`download` against a real HTTP server on 127.0.0.1 (no network needed)."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import h5py
import numpy as np
import pytest

from ombrl.data.d4rl import download, read_hdf5
from ombrl.errors import OmbrlError

NAME = "hopper-medium-v2"
ROUTE = "/gym_mujoco_v2/hopper_medium-v2.hdf5"


class Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path] = (body, content_length)`; 404 for anything else."""

    def do_GET(self) -> None:
        self.server.requests.append(self.path)
        if self.path not in self.server.routes:
            self.send_error(404)
            return
        body, length = self.server.routes[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server(monkeypatch):
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.routes, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    monkeypatch.setenv("OMBRL_D4RL_URL", f"http://127.0.0.1:{httpd.server_address[1]}/")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def hdf5_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("src") / "file.hdf5"
    n = 3000  # large enough that a half file is missing whole datasets' data
    with h5py.File(path, "w") as f:
        f["observations"] = np.random.default_rng(0).normal(size=(n, 11)).astype(np.float32)
        f["actions"] = np.zeros((n, 3), np.float32)
        f["rewards"] = np.ones(n, np.float32)
        f["terminals"] = np.zeros(n, bool)
        f["timeouts"] = np.arange(n) % 1000 == 999
    return path.read_bytes()


def test_download_puts_a_valid_file_in_the_cache_once(server, hdf5_bytes, tmp_path):
    server.routes[ROUTE] = (hdf5_bytes, len(hdf5_bytes))
    cache = tmp_path / "cache"
    path = download(NAME, cache)
    assert path == cache / f"{NAME}.hdf5"
    assert path.read_bytes() == hdf5_bytes
    assert [p.name for p in cache.iterdir()] == [path.name]  # no temporary file left
    ds = read_hdf5(path)
    assert ds.env_id == "Hopper-v4" and len(ds) == 2997  # 3 timed-out steps dropped
    assert download(NAME, cache) == path
    assert server.requests == [ROUTE]  # the second call used the cache


def test_file_cached_under_its_server_name_is_used(server, hdf5_bytes, tmp_path):
    """The d4rl package caches `hopper_medium-v2.hdf5`: copied into the cache, it is used."""
    served = tmp_path / Path(ROUTE).name
    served.write_bytes(hdf5_bytes)
    assert download(NAME, tmp_path) == served
    assert server.requests == []


def test_broken_cached_file_is_downloaded_again(server, hdf5_bytes, tmp_path):
    server.routes[ROUTE] = (hdf5_bytes, len(hdf5_bytes))
    (tmp_path / f"{NAME}.hdf5").write_bytes(b"half a file")
    path = download(NAME, tmp_path)
    assert path.read_bytes() == hdf5_bytes and server.requests == [ROUTE]


def test_content_length_larger_than_body_is_rejected(server, hdf5_bytes, tmp_path):
    server.routes[ROUTE] = (hdf5_bytes, len(hdf5_bytes) + 1000)
    with pytest.raises(OmbrlError, match="truncated"):
        download(NAME, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_truncated_hdf5_body_is_rejected(server, hdf5_bytes, tmp_path):
    half = hdf5_bytes[: len(hdf5_bytes) // 2]
    server.routes[ROUTE] = (half, len(half))  # consistent header, broken file
    with pytest.raises(
        OmbrlError, match=f"download of http://127.0.0.1:\\d+{ROUTE} is not a valid"
    ):
        download(NAME, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_http_error_names_url_and_manual_path(server, tmp_path):
    with pytest.raises(OmbrlError) as err:
        download(NAME, tmp_path)
    message = str(err.value)
    assert f"{ROUTE} (HTTP 404)" in message
    assert f"place the file by hand at {tmp_path / (NAME + '.hdf5')}" in message
    assert list(Path(tmp_path).iterdir()) == []


def test_unreachable_server_gives_one_line_error(monkeypatch, tmp_path):
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("OMBRL_D4RL_URL", f"http://127.0.0.1:{port}/")
    with pytest.raises(OmbrlError) as err:
        download(NAME, tmp_path, timeout=5)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download http://127.0.0.1:{port}{ROUTE} (")
    assert f"by hand at {tmp_path / (NAME + '.hdf5')}" in message
    assert list(tmp_path.iterdir()) == []


def test_download_rejects_unknown_names(tmp_path):
    with pytest.raises(OmbrlError, match="unknown D4RL dataset 'hopper-great-v2'"):
        download("hopper-great-v2", tmp_path)

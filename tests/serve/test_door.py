"""`lmstack serve` as a user starts it (a subprocess, the default --log-level info): a key sent in
the URL never reaches the access log, and a request body that stalls gets 408 instead of
holding the connection open.

The log is the server's own stdout and stderr; the stalled body is sent over a raw socket
(headers and part of a body, then nothing), as a slow or malicious client would.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
import torch

httpx = pytest.importorskip("httpx")

from lmstack.models import GPT, GPTConfig  # noqa: E402
from lmstack.models.directory import save_model  # noqa: E402

from ..benchmarks.test_benchmarks import load  # noqa: E402

KEY = "sk-door-test-0123456789"
URL_SECRET = "sk-in-the-url-9876543210"
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(tok, tmp_path_factory):
    """The server's URL and the path of its log (read after it stops)."""
    model_dir = tmp_path_factory.mktemp("door") / "tiny"
    torch.manual_seed(0)
    save_model(model_dir, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1,
                                        n_head=2, n_embd=32)))
    tok.save(model_dir / "tokenizer.json")
    bench = load("serve")
    port = bench.free_port()
    log_path = model_dir.parent / "server.log"
    cmd = [*bench.lmstack_command(), "serve", "--model", str(model_dir), "--port", str(port),
           "--threads", "1", "--body-timeout", str(BODY_TIMEOUT)]  # --log-level: the default
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, "LMSTACK_API_KEY": KEY})
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                try:
                    if httpx.get(url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            yield url, port, log_path
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _raw_post(port: int, body: bytes, send: int, pause: float, declared: int | None = None) -> bytes:
    """POST /v1/completions over a raw socket: the headers and `send` bytes of `body`, then
    `pause` seconds of silence, then the rest; returns whatever the server answered."""
    head = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {declared or len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(head.encode() + body[:send])
        time.sleep(pause)
        try:
            s.sendall(body[send:])
        except OSError:  # the server may have answered and closed already
            pass
        chunks = []
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(raw: bytes) -> bool:
    head, _, body = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def test_a_stalled_body_gets_408_and_a_slow_one_within_the_limit_is_served(server):
    url, port, _ = server
    body = json.dumps({"prompt": "def", "max_tokens": 2}).encode()
    stalled = _raw_post(port, body, send=5, pause=BODY_TIMEOUT + 2.0, declared=len(body) + 50)
    assert stalled.startswith(b"HTTP/1.1 408"), stalled[:200]
    error = json.loads(stalled.partition(b"\r\n\r\n")[2])["error"]
    assert error["code"] == "request_timeout" and "--body-timeout" in error["message"]
    # The control: a body that pauses for less than the limit is answered as usual.
    slow = _raw_post(port, body, send=5, pause=BODY_TIMEOUT / 4)
    assert slow.startswith(b"HTTP/1.1 200"), slow[:300]
    assert httpx.get(url + "/health", timeout=5).status_code == 200  # still serving


def test_a_key_in_the_url_is_not_written_to_the_log(server):
    url, _, log_path = server
    r = httpx.get(f"{url}/v1/models?api_key={URL_SECRET}&x=1", timeout=5)
    assert r.status_code == 401
    ok = httpx.get(f"{url}/v1/models?page={URL_SECRET[::-1]}",
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=5)
    assert ok.status_code == 200
    time.sleep(0.5)  # the access log line is written after the response
    log = log_path.read_text()
    # The control: the access log is on and holds both requests, paths without their queries.
    assert '"GET /v1/models HTTP/1.1" 401' in log and '"GET /v1/models HTTP/1.1" 200' in log, log
    assert URL_SECRET not in log and URL_SECRET[::-1] not in log and KEY not in log
    assert "Traceback" not in log, log[-3000:]

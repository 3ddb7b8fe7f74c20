"""Guards at the server's door: API keys checked in constant time, a request size limit and a
body-read timeout, and an access log that never writes query strings.

API keys come from `--api-key-file` (one key per line; blank lines and `#` comments skipped)
or the environment variable LMSTACK_API_KEY. A client sends `Authorization: Bearer KEY`.
Every configured key is compared with `hmac.compare_digest`, and all of them are compared
whatever the outcome, so the time taken says nothing about how much of a key was right. Keys
are never logged, echoed in errors, or shown in the metrics.

The size limit is enforced as the body streams in, so neither a large Content-Length nor a
chunked upload without one gets more than `max_bytes` into memory: 413 in OpenAI's error shape.
The whole body must arrive within `timeout_s` of the request's headers, so a client that stalls
mid-body (by accident, or slowloris-style) does not hold a connection forever: 408.

uvicorn's access log writes each request line, query string included, and a client may put a
key there (`?api_key=sk-...`, refused with 401, but then on disk): `access_log_config` drops
query strings from it.
"""

from __future__ import annotations

import asyncio
import copy
import hmac
import json
import logging
import os
from pathlib import Path

from lmstack.errors import ConfigError

ENV_VAR = "LMSTACK_API_KEY"


def load_api_keys(path: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> list[str]:
    """Keys from a file (one per line) and from $LMSTACK_API_KEY; empty means no auth.

    >>> load_api_keys(env={"LMSTACK_API_KEY": "sk-1"})
    ['sk-1']
    """
    env = os.environ if env is None else env
    keys = []
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --api-key-file {path}: {e}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not keys:
            raise ConfigError(f"--api-key-file {path} holds no keys; write one key per line")
    if env.get(ENV_VAR):
        keys.append(env[ENV_VAR].strip())
    return keys


def key_matches(header: str | None, keys: list[str]) -> bool:
    """Whether an Authorization header carries one of `keys` (constant time per key).

    >>> key_matches("Bearer sk-1", ["sk-0", "sk-1"]), key_matches("Bearer sk-", ["sk-1"])
    (True, False)
    """
    given = header[7:].strip() if header and header[:7].lower() == "bearer " else ""
    ok = False
    for key in keys:  # no early exit: compare against every key
        ok |= hmac.compare_digest(given.encode(), key.encode())
    return ok


class BodyLimit:
    """ASGI middleware: answer 413 once a request body grows past `max_bytes`, and 408 when it
    has not all arrived `timeout_s` seconds after the headers."""

    def __init__(self, app, max_bytes: int, timeout_s: float = 30.0) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        # Read the whole body here (it is small by definition), then replay it to the app;
        # later receive() calls pass through so the app still sees a disconnect.
        chunks, size = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s  # for the whole body, not each chunk: slowloris
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - loop.time())
            except TimeoutError:
                return await self._timed_out(send)
            if message["type"] != "http.request":
                return  # the client went away before sending its body
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                return await self._reject(send)
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        pending = [{"type": "http.request", "body": b"".join(chunks), "more_body": False}]

        async def replay():
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        await _error(send, 413, f"request body is larger than the server's limit of "
                     f"{self.max_bytes} bytes; send a shorter prompt (or start the server with a "
                     "larger --max-body-bytes)", "request_too_large")

    async def _timed_out(self, send) -> None:
        await _error(send, 408, f"the request body did not arrive within {self.timeout_s:g} s of "
                     "its headers; send the whole body at once (or start the server with a "
                     "larger --body-timeout)", "request_timeout")


async def _error(send, status: int, message: str, code: str) -> None:
    """An error response in OpenAI's JSON shape, sent from the raw ASGI side."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                 "param": None, "code": code}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 408:  # the rest of the body may still come: this connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class NoQueryStrings(logging.Filter):
    """Cut the query string from uvicorn's access-log records (their request line).

    >>> r = logging.LogRecord("uvicorn.access", 20, "", 0, '%s - "%s %s HTTP/%s" %d',
    ...                       ("127.0.0.1:5", "GET", "/v1/models?api_key=sk-1", "1.1", 401), None)
    >>> NoQueryStrings().filter(r), r.getMessage()
    (True, '127.0.0.1:5 - "GET /v1/models HTTP/1.1" 401')
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # uvicorn's access record
            client, method, path, version, status = record.args
            record.args = (client, method, str(path).split("?", 1)[0], version, status)
        return True


def access_log_config() -> dict:
    """uvicorn's logging config (its `log_config`), with `NoQueryStrings` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["no_query_strings"] = {"()": NoQueryStrings}
    config["handlers"]["access"]["filters"] = ["no_query_strings"]
    return config

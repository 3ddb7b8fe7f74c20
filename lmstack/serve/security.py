"""Guards at the server's door: API keys checked in constant time, and a request size limit.

API keys come from `--api-key-file` (one key per line; blank lines and `#` comments skipped)
or the environment variable LMSTACK_API_KEY. A client sends `Authorization: Bearer KEY`.
Every configured key is compared with `hmac.compare_digest`, and all of them are compared
whatever the outcome, so the time taken says nothing about how much of a key was right. Keys
are never logged, echoed in errors, or shown in the metrics.

The size limit is enforced as the body streams in, so neither a large Content-Length nor a
chunked upload without one gets more than `max_bytes` into memory: 413 in OpenAI's error shape.
"""

from __future__ import annotations

import hmac
import json
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
    """ASGI middleware: answer 413 once a request body grows past `max_bytes`."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        # Read the whole body here (it is small by definition), then replay it to the app;
        # later receive() calls pass through so the app still sees a disconnect.
        chunks, size = [], 0
        while True:
            message = await receive()
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
        body = json.dumps({"error": {
            "message": f"request body is larger than the server's limit of {self.max_bytes} bytes; "
                       "send a shorter prompt (or start the server with a larger --max-body-bytes)",
            "type": "invalid_request_error", "param": None, "code": "request_too_large"}}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

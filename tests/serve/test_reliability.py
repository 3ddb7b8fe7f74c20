"""Reliability of `lmstack serve` under a storm: 200 requests from 16 concurrent clients, a seeded
random mix of valid requests (streaming and not, completions and chat), clients that hang up
mid-stream, and every kind of bad request, against the server running as a subprocess exactly
as a user starts it (a tiny random-weight model, --max-batch 8 and a small --max-queue, so some
valid requests are turned away with 429).

Checked, request by request: a bad request gets the right 4xx in OpenAI's error shape, with the
field at fault in `param` and in the message; a valid one gets 200 (or 429 in the error shape)
and a well-formed reply, streams ending with `data: [DONE]`. After the storm: the server still
answers correctly (the same greedy text as the engine in this process), /health drains to 0
running and 0 waiting, a client that hangs up stops its generation, /metrics counted what the
clients saw, and the server's memory (VmRSS) neither stays up after a storm nor grows from one
storm to the next.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

httpx = pytest.importorskip("httpx")

from lmstack.infer import Engine  # noqa: E402
from lmstack.models import GPT, GPTConfig  # noqa: E402
from lmstack.models.directory import save_model  # noqa: E402

from ..benchmarks.test_benchmarks import load  # noqa: E402

MAX_BATCH, MAX_QUEUE, CLIENTS, STORM = 8, 4, 16, 200
BODY_LIMIT = 1_000_000       # the server's default --max-body-bytes
BLOCK = 512                  # context of the tiny model
ROUTES = ("/v1/completions", "/v1/chat/completions")
# Memory: after a storm the server's RSS may sit above the warm-up baseline without a leak —
# glibc's malloc keeps freed arenas (one per thread that allocated: uvicorn's loop, the
# scheduler, anyio's worker threads), torch's CPU allocator caches blocks of the batch shapes
# it has seen, and a 1 MB body is read into memory before the 413. Allow 40 MB or 15% over the
# baseline. The sharper test is the second storm: the same mix again must not add more than
# LEAK_TOLERANCE, since caches are warm by then; a leak of a KV cache row per request (2 layers
# x 2 x 512 x 64 floats = 512 KB) over 200 requests would be ~100 MB, far above it.
SETTLE_TOLERANCE = (40 << 20, 0.15)
LEAK_TOLERANCE = 12 << 20


# ---- the server --------------------------------------------------------------------------------

@dataclass
class Server:
    url: str
    pid: int
    model: str
    model_dir: Path

    def rss(self) -> int:
        """The server process's resident set size in bytes (/proc/PID/status, VmRSS)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1)) * 1024


@pytest.fixture(scope="module")
def server(tok, tmp_path_factory):
    if not Path("/proc/self/status").exists():
        pytest.skip("reads the server's memory from /proc (Linux)")
    model_dir = tmp_path_factory.mktemp("reliability") / "tiny"
    torch.manual_seed(0)
    save_model(model_dir, GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=BLOCK, n_layer=2, n_head=2,
                                        n_embd=64)))
    tok.save(model_dir / "tokenizer.json")
    log = model_dir.parent / "server.log"
    # The same launcher as benchmarks/serve.py: `lmstack serve` exactly as a user starts it.
    with load("serve").run_server(model_dir, threads=1, max_batch=MAX_BATCH, max_queue=MAX_QUEUE,
                                  startup_timeout=60, log_path=log) as running:
        yield Server(running.url, running.pid, running.model, model_dir)
    # Nothing the storm did may have reached the server's log as a traceback (a 500 would).
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


# ---- the requests ------------------------------------------------------------------------------

@dataclass
class Case:
    """One request of the storm and what the answer must be."""

    kind: str                        # "valid", "disconnect" or the name of a bad-request case
    route: str
    body: dict | None = None         # sent as JSON
    raw: bytes | None = None         # sent as is (malformed JSON, oversized body)
    status: int = 200                # expected; valid requests may also get 429
    param: str | None = None         # the field the error must name (a prefix of `param`)
    code: str | None = None          # the error code, when one is promised
    stream: bool = False
    max_tokens: int = 0


WORDS = ["def", "class", "import", "return", "self", "value", "for", "in", "if", "else", "print",
         "os", "path", "x", "y", "lambda", "None", "True", "(", ")", ":", "=", "+", ","]


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 30)))


def _valid(rng: random.Random, chat: bool, stream: bool) -> Case:
    max_tokens = rng.randint(4, 16)
    body = {"model": "tiny", "max_tokens": max_tokens, "temperature": rng.choice([0, 0.7, 1.0]),
            "seed": rng.randint(0, 1000), "stream": stream}
    if rng.random() < 0.3:
        body["top_p"] = 0.9
    if stream and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    if not stream and rng.random() < 0.2:
        body["n"] = 2
    if chat:
        body["messages"] = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": _prompt(rng)}]
    else:
        body["prompt"] = _prompt(rng)
    return Case("valid", ROUTES[chat], body, stream=stream, max_tokens=max_tokens)


def _bad(rng: random.Random) -> Case:
    chat = rng.random() < 0.5
    route = ROUTES[chat]
    base = ({"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4} if chat
            else {"model": "tiny", "prompt": "import os", "max_tokens": 4})
    cases = [
        ("malformed JSON", None, 400, None),
        ("temperature hot", {"temperature": "hot"}, 400, "temperature"),
        ("n 1.5", {"n": 1.5}, 400, "n"),
        ("max_tokens true", {"max_tokens": True}, 400, "max_tokens"),
        ("temperature 5", {"temperature": 5}, 400, "temperature"),
        ("top_p 0", {"top_p": 0}, 400, "top_p"),
        ("top_p 1.5", {"top_p": 1.5}, 400, "top_p"),
        ("n 0", {"n": 0}, 400, "n"),
        ("max_tokens -1", {"max_tokens": -1}, 400, "max_tokens"),
        ("logprobs 99", {"logprobs": 99}, 400, "logprobs"),
        ("presence_penalty 3", {"presence_penalty": 3}, 400, "presence_penalty"),
        ("logit_bias key", {"logit_bias": {"abc": 1}}, 400, "logit_bias"),
        ("logit_bias value", {"logit_bias": {"5": 1000}}, 400, "logit_bias"),
        ("logit_bias beyond vocab", {"logit_bias": {"999999": 1}}, 400, "logit_bias"),
        ("stop x5", {"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ("unknown field", {"temprature": 0.5}, 400, "temprature"),
        ("oversized body", None, 413, None),
        ("wrong model", {"model": "gpt-4"}, 404, "model"),
    ]
    if chat:
        cases += [
            ("messages hi", {"messages": "hi"}, 400, "messages"),
            ("messages empty", {"messages": []}, 400, "messages"),
            ("bad role", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
            ("top_logprobs 50", {"logprobs": True, "top_logprobs": 50}, 400, "top_logprobs"),
        ]
    name, change, status, param = rng.choice(cases)
    case = Case(name, route, {**base, **(change or {})}, status=status, param=param,
                stream=rng.random() < 0.3)
    case.body["stream"] = case.stream
    if name == "malformed JSON":
        case.raw, case.body, case.code = json.dumps(case.body)[:-1].encode(), None, "invalid_json"
    elif name == "oversized body":
        case.raw = json.dumps({**base, "prompt" if not chat else "user": "x" * BODY_LIMIT}).encode()
        case.body, case.code = None, "request_too_large"
    elif name == "wrong model":
        case.code = "model_not_found"
    return case


def make_cases(n: int, seed: int) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        u = rng.random()
        if u < 0.5:
            cases.append(_valid(rng, chat=rng.random() < 0.5, stream=rng.random() < 0.5))
        elif u < 0.6:
            case = _valid(rng, chat=rng.random() < 0.5, stream=True)
            case.kind, case.max_tokens = "disconnect", 64
            case.body.update(max_tokens=64, ignore_eos=True)
            cases.append(case)
        else:
            cases.append(_bad(rng))
    return cases


# ---- the storm ---------------------------------------------------------------------------------

@dataclass
class Outcome:
    case: Case
    status: int | None
    problems: list[str] = field(default_factory=list)


def check_error(case: Case, status: int, data: bytes, problems: list[str]) -> None:
    """An error reply must be OpenAI's shape; a field error names the field."""
    try:
        err = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        problems.append(f"{status} without the error shape: {data[:300]!r}")
        return
    if set(err) != {"message", "type", "param", "code"} or not isinstance(err["message"], str) or not err["message"]:
        problems.append(f"bad error object: {err}")
        return
    if "Traceback" in err["message"]:
        problems.append(f"traceback in the message: {err['message'][:300]}")
    if status == 429:
        if err["type"] != "rate_limit_error":
            problems.append(f"429 with type {err['type']!r}")
        return
    if case.param is not None:
        if not (isinstance(err["param"], str) and err["param"].startswith(case.param)):
            problems.append(f"param {err['param']!r}, expected {case.param!r} ({err['message']!r})")
        elif err["param"] not in err["message"]:
            problems.append(f"the message does not name {err['param']!r}: {err['message']!r}")
    elif err["param"] is not None:
        problems.append(f"param {err['param']!r} for a request with no field at fault")
    if case.code is not None and err["code"] != case.code:
        problems.append(f"code {err['code']!r}, expected {case.code!r}")


def check_reply(case: Case, reply: dict, problems: list[str]) -> None:
    """A non-streaming 200: the OpenAI shape, and no more tokens than asked for."""
    chat = case.route == ROUTES[1]
    n = case.body.get("n", 1)
    if reply.get("object") != ("chat.completion" if chat else "text_completion") or len(reply["choices"]) != n:
        problems.append(f"bad reply: {str(reply)[:300]}")
        return
    for choice in reply["choices"]:
        text = choice["message"]["content"] if chat else choice["text"]
        if not isinstance(text, str) or choice["finish_reason"] not in ("stop", "length"):
            problems.append(f"bad choice: {choice}")
    usage = reply["usage"]
    if not 1 <= usage["completion_tokens"] <= n * case.max_tokens or usage["prompt_tokens"] < 1:
        problems.append(f"bad usage: {usage}")


def check_stream(case: Case, data: bytes, problems: list[str]) -> None:
    """A streamed 200: every event a JSON chunk, ending with [DONE]; usage when asked for."""
    events = [e for e in data.decode().split("\n\n") if e]
    if not events or events[-1] != "data: [DONE]":
        problems.append(f"stream does not end with [DONE]: {data[-200:]!r}")
        return
    chunks = []
    for e in events[:-1]:
        if not e.startswith("data: "):
            problems.append(f"not an SSE data event: {e[:100]!r}")
            return
        chunks.append(json.loads(e[6:]))
    if any("error" in c for c in chunks):
        problems.append(f"error in the stream: {[c for c in chunks if 'error' in c][0]}")
        return
    finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    if finishes[-1:] not in (["stop"], ["length"]) or any(finishes[:-1]):
        problems.append(f"finish reasons {finishes}")
    if (case.body.get("stream_options") or {}).get("include_usage"):
        usage = chunks[-1].get("usage") or {}
        if chunks[-1]["choices"] or not 1 <= usage.get("completion_tokens", 0) <= case.max_tokens:
            problems.append(f"bad usage chunk: {chunks[-1]}")


async def send(case: Case, http: httpx.AsyncClient) -> Outcome:
    kwargs = {"json": case.body} if case.raw is None else {
        "content": case.raw, "headers": {"content-type": "application/json"}}
    out = Outcome(case, None)
    try:
        if case.kind == "disconnect":
            # A client of its own, so closing the response closes the connection.
            async with httpx.AsyncClient(base_url=str(http.base_url), timeout=30) as own:
                async with own.stream("POST", case.route, **kwargs) as r:
                    out.status = r.status_code
                    if r.status_code == 200:
                        async for line in r.aiter_lines():
                            if line.startswith("data: "):
                                break  # hang up after the first chunk
                    elif r.status_code != 429:
                        out.problems.append(f"status {r.status_code}, expected 200 or 429: {(await r.aread())[:300]!r}")
                    else:
                        check_error(case, r.status_code, await r.aread(), out.problems)
            return out
        r = await http.post(case.route, **kwargs)
        out.status = r.status_code
        ok = {200, 429} if case.kind == "valid" else {case.status}
        if r.status_code not in ok:
            out.problems.append(f"status {r.status_code}, expected {sorted(ok)}: {r.content[:300]!r}")
        elif r.status_code != 200:
            check_error(case, r.status_code, r.content, out.problems)
        elif case.stream:
            check_stream(case, r.content, out.problems)
        else:
            check_reply(case, r.json(), out.problems)
    except httpx.HTTPError as e:
        out.problems.append(f"{type(e).__name__}: {e}")
    return out


async def storm_async(url: str, cases: list[Case]) -> list[Outcome]:
    todo = iter(cases)
    outcomes: list[Outcome] = []

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            for case in todo:  # the clients share one iterator: each takes the next case
                outcomes.append(await send(case, http))

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return outcomes


def storm(server: Server, n: int, seed: int) -> list[Outcome]:
    outcomes = asyncio.run(storm_async(server.url, make_cases(n, seed)))
    assert len(outcomes) == n
    problems = [f"{o.case.kind} {o.case.route} {o.case.body if o.case.raw is None else '<raw>'}: {p}"
                for o in outcomes for p in o.problems]
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
    return outcomes


def request_counts(server: Server) -> Counter:
    """lmstack_requests_total by (route, status), from /metrics."""
    text = httpx.get(server.url + "/metrics").text
    counts = Counter()
    for route, status, value in re.findall(r'^lmstack_requests_total\{route="([^"]+)",status="(\d+)"\} (\S+)$',
                                           text, re.M):
        counts[route, int(status)] = int(float(value))
    return counts


def settle(server: Server, timeout: float = 5.0) -> dict:
    """Wait until no request runs or waits; the last /health."""
    deadline = time.monotonic() + timeout
    while True:
        health = httpx.get(server.url + "/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        assert time.monotonic() < deadline, f"the server did not drain within {timeout} s: {health}"
        time.sleep(0.05)


# ---- the test ----------------------------------------------------------------------------------

def test_server_survives_a_storm_of_good_bad_and_abandoned_requests(server):
    storm(server, 40, seed=0)                              # warm-up: the same mix, smaller; caches filled
    settle(server)
    time.sleep(0.5)
    baseline = server.rss()

    before = request_counts(server)
    outcomes = storm(server, STORM, seed=1)
    kinds = Counter(o.case.kind for o in outcomes)
    statuses = Counter(o.status for o in outcomes)
    # The mix really was a mix, and the server really did serve it.
    assert kinds["valid"] >= 60 and kinds["disconnect"] >= 10 and len(kinds) >= 15, kinds
    assert statuses[200] >= 30 and statuses[400] >= 40, statuses
    settle(server)

    # /metrics counted, per route and status, exactly what the clients saw.
    seen = Counter((o.case.route, o.status) for o in outcomes)
    after = request_counts(server)
    delta = {k: after[k] - before[k] for k in set(after) | set(before) if k[0] in ROUTES and after[k] != before[k]}
    assert delta == dict(seen), (delta, dict(seen))

    # Still correct: a greedy completion matches the engine run in this process.
    engine = Engine.load(server.model_dir)
    expected = engine.generate("def main(", temperature=0, max_new_tokens=12)
    reply = httpx.post(server.url + "/v1/completions", json={"model": "tiny", "prompt": "def main(",
                                                              "max_tokens": 12, "temperature": 0}).json()
    assert reply["choices"][0]["text"] == expected.text
    # usage counts the end-of-text token when one ended the reply
    assert reply["usage"]["completion_tokens"] == len(expected.tokens) + (expected.finish_reason == "stop")

    # A client that hangs up stops its generation: far fewer steps than it asked for.
    steps = settle(server)["steps"]
    with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                      json={"prompt": "import", "max_tokens": BLOCK - 8, "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        next(line for line in r.iter_lines() if line.startswith("data: "))
    taken = settle(server)["steps"] - steps
    assert taken < (BLOCK - 8) // 2, f"{taken} steps after the client hung up"

    time.sleep(0.5)
    first = server.rss()
    storm(server, STORM, seed=2)
    settle(server)
    time.sleep(0.5)
    second = server.rss()
    mb = 1 << 20
    report = f"RSS baseline {baseline / mb:.0f} MB, after storm 1 {first / mb:.0f} MB, after storm 2 {second / mb:.0f} MB"
    print(report)
    assert first - baseline <= max(SETTLE_TOLERANCE[0], SETTLE_TOLERANCE[1] * baseline), report
    assert second - first <= LEAK_TOLERANCE, report

"""`lmstack serve`: load a model directory and run the OpenAI-compatible server under uvicorn.

    lmstack serve --model runs/quickstart                       # http://127.0.0.1:8000
    LMSTACK_API_KEY=sk-local lmstack serve --model DIR --port 9000
    lmstack serve --model DIR --api-key-file keys.txt --host 0.0.0.0   # reachable from outside

    lmstack serve --model DIR --prompt-lookup 3                  # speculative decoding
    lmstack serve --model DIR --medusa          # the heads `lmstack train-heads` wrote to DIR
    lmstack serve --model DIR --lora sql=runs/sql-lora --lora poem=runs/poem-lora   # adapters
    lmstack serve --model smollm2 --adapter runs/sft-prompt      # one adapter of any PEFT type
    lmstack serve --model runs/sft --reward-model runs/rm        # best_of ranked by a reward model

It binds to 127.0.0.1 unless --host says otherwise; serving on another address without an API
key prints a warning. `--medusa [DIR]`, `--draft DIR` or `--prompt-lookup N` (+ `--gamma N`),
the flags of `lmstack generate` and `chat`, make every request speculate (scheduler.py): the
same greedy text, the same sampling distribution, in fewer forward passes. `--lora NAME=DIR`
(repeatable) serves LoRA adapters over the base: a request's `model` field picks one by NAME (or
the base by its own name), and rows of different adapters share each batch
(posttrain/peft/multi_lora.py; docs/serving.md "Serving LoRA adapters"). `--adapter DIR` serves
one adapter of any PEFT type (a soft prompt, Houlsby adapters, QLoRA) as the model instead.
`--reward-model DIR` ranks the candidates of requests with `best_of` (serve/best_of.py) by that
reward model (posttrain/reward_ranking.py; it must share the model's tokenizer) instead of by
mean log-probability.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys

from lmstack import MODEL_HELP
from lmstack.errors import ConfigError
from lmstack.infer.commands import add_speculation_flags


def add_serve_args(p: argparse.ArgumentParser) -> None:
    """The flags of `lmstack serve`."""
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (127.0.0.1: this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--served-model-name", default=None,
                   help="the model id clients use (default: the short name, the file's or the directory's name)")
    p.add_argument("--api-key-file", default=None,
                   help="file with one API key per line (or set LMSTACK_API_KEY)")
    p.add_argument("--max-batch", type=int, default=8, help="rows decoded together")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000, help="largest request body")
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a request body may take to arrive after its headers (then 408)")
    p.add_argument("--prefix-cache-mb", type=int, default=256,
                   help="memory for reusing prompt prefixes across requests (0 = off)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                   help="run the model in this precision (default: as stored)")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=DIR",
                   help="serve the LoRA adapter in DIR (PEFT format) as model NAME over the base; "
                        "repeat for several: requests pick one by their `model` field, and rows "
                        "of different adapters decode in one batch. A quantized --model (a GGUF "
                        "file such as smollm2) is dequantized to float32 first, the floats `lmstack "
                        "sft` trains adapters on")
    p.add_argument("--adapter", default=None, metavar="DIR",
                   help="serve the base with the one adapter in DIR, of any PEFT type, put on as "
                        "`generate --lora DIR` puts it (LoRA merged; QLoRA over its 4-bit base; a "
                        "soft prompt; Houlsby adapters), under the base's name: for an adapter "
                        "--lora cannot serve per row")
    p.add_argument("--reward-model", default=None, metavar="DIR",
                   help="rank the candidates of a request's best_of by this reward model (`lmstack "
                        "reward`'s --out; --model's tokenizer) instead of their mean log-probability")
    add_speculation_flags(p)
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level; info logs each request (never its query string)")


def cmd_serve(args: argparse.Namespace) -> None:
    """Run the server until interrupted."""
    import uvicorn

    from lmstack.infer.commands import speculative_from_args
    from lmstack.models.directory import model_chat_template
    from lmstack.models.installed import model_name
    from lmstack.serve.app import ServerConfig, create_app
    from lmstack.serve.security import access_log_config, load_api_keys

    if not 0 < args.port < 65536:
        raise ConfigError(f"--port must be in 1..65535, got {args.port}")
    check_port_free(args.host, args.port)
    if args.max_batch < 1 or args.max_queue < 0 or args.max_body_bytes < 1024 or args.prefix_cache_mb < 0:
        raise ConfigError("--max-batch must be >= 1, --max-queue >= 0, --max-body-bytes >= 1024 "
                          "and --prefix-cache-mb >= 0")
    if not args.body_timeout > 0:
        raise ConfigError(f"--body-timeout must be a positive number of seconds, got {args.body_timeout}")
    keys = load_api_keys(args.api_key_file)
    if not keys and not _is_loopback(args.host):
        print(f"warning: serving on {args.host} without an API key; anyone who can reach this port "
              "can use the model (set LMSTACK_API_KEY or --api-key-file)", file=sys.stderr)
    name = args.served_model_name or model_name(args.model)
    adapters = parse_lora_flags(args.lora)
    if name in adapters:
        raise ConfigError(f"--lora {name}=...: {name!r} is the base model's name; give the adapter "
                          "another name (or the base another --served-model-name)")
    engine = load_engine(args, adapters)
    speculative = speculative_from_args(engine, args)
    config = ServerConfig(model_name=name, max_batch=args.max_batch, max_queue=args.max_queue,
                          max_body_bytes=args.max_body_bytes, body_timeout_s=args.body_timeout,
                          api_keys=keys, host=args.host, port=args.port)
    template = model_chat_template(args.model)
    ranker = load_ranker(args, engine, template)
    app = create_app(engine, config, template, speculative, ranker)
    print(f"serving {name} on http://{args.host}:{args.port}  (web chat at /, API at /v1)", file=sys.stderr)
    if adapters:
        print(f"LoRA adapters (a request's `model` picks one): {', '.join(adapters)}", file=sys.stderr)
    if args.adapter is not None:
        print(f"serving the base with the adapter {args.adapter} on it, as {name}", file=sys.stderr)
    if ranker is not None:
        print(f"best_of candidates ranked by the reward model {args.reward_model}", file=sys.stderr)
    if speculative is not None:
        print(f"speculating with {speculative.drafter}, up to {speculative.gamma} tokens a round: "
              "every request drafts and verifies", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                log_config=access_log_config())


def load_engine(args: argparse.Namespace, adapters: dict[str, str]):
    """The engine `lmstack serve` runs: --model with its prefix cache and dtype, and the LoRA
    adapters (name -> directory) attached for per-row serving, or the one --adapter put on as
    generate's --lora puts it (posttrain/peft/multi_lora.py)."""
    from lmstack.infer import Engine
    from lmstack.infer.prefix_cache import PrefixCache
    from lmstack.posttrain.peft.multi_lora import attach_adapters, inference_adapter

    prefix_cache = PrefixCache(max_bytes=args.prefix_cache_mb << 20) if args.prefix_cache_mb else None
    adapt = (lambda model: attach_adapters(model, adapters)) if adapters else None
    if getattr(args, "adapter", None) is not None:
        if adapters:
            raise ConfigError("--adapter DIR serves one adapter as the model, --lora NAME=DIR several "
                              "LoRA ones per row over the base; give one or the other")
        adapt = inference_adapter(args.adapter)
    return Engine.load(args.model, prefix_cache=prefix_cache, dtype=args.dtype, adapt=adapt)


def load_ranker(args: argparse.Namespace, engine, template):
    """The --reward-model that ranks best_of candidates (checked against the model's tokenizer),
    on the model's device; None without the flag."""
    if getattr(args, "reward_model", None) is None:
        return None
    from lmstack.models.protocol import model_device
    from lmstack.posttrain.reward_ranking import load_reward_ranker

    return load_reward_ranker(args.reward_model, engine.tokenizer, args.model, template,
                              device=model_device(engine.model))


def parse_lora_flags(specs: list[str]) -> dict[str, str]:
    """`--lora NAME=DIR` flags as {name: directory}, in the order given; ConfigError for a flag
    without a name, or a name given twice.

    >>> parse_lora_flags(["sql=runs/a", "poem=/x=y"])
    {'sql': 'runs/a', 'poem': '/x=y'}
    """
    out: dict[str, str] = {}
    for spec in specs:
        name, eq, directory = spec.partition("=")
        if not eq or not name.strip() or not directory:
            raise ConfigError(f"--lora {spec!r}: give NAME=DIR, the model id clients ask for and "
                              "the adapter directory (e.g. --lora sql=runs/sql-lora)")
        if name in out:
            raise ConfigError(f"--lora: the name {name!r} is given twice; each adapter needs its own")
        out[name] = directory
    return out


def check_port_free(host: str, port: int) -> None:
    """Bind host:port once and let go, so that a busy port is a one-line error before the model
    loads (uvicorn would print that it is serving, then fail with exit status 3)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} is not an address of this machine ({e.strerror}); "
                          "use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                why = "is already in use (another server listens there); pick a free one with --port"
            elif e.errno == errno.EACCES:
                why = "needs administrator rights; use --port 1024 or above"
            else:
                why = f"cannot be bound on {host} ({e.strerror}); check --host and --port"
            raise ConfigError(f"port {port} {why}") from None


def _is_loopback(host: str) -> bool:
    """True for 127.0.0.1, ::1 and localhost.

    >>> _is_loopback("127.0.0.1"), _is_loopback("0.0.0.0")
    (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

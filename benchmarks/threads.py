"""How many torch threads: a short greedy generate and a training step of the quickstart's GPT
at 1 and 2 intra-op threads, alone and with other processes busy on the cores; and how steady the
MFU denominator (models/metrics.py's measured matmul peak) is across processes.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/threads.py [--threads 1 2]
        [--busy 0 1 2] [--competitor python|torch] [--policies default passive]
        [--tokens 60] [--repeats 3] [--peak-runs 6]

Each case runs in a fresh process (OpenMP reads its wait policy when torch loads): the
quickstart's GPT (4 layers, width 128, vocabulary 8192, random weights) generates --tokens
greedy tokens after an 8-token prompt (`Engine.generate(temperature=0)`), and takes training
steps (batch 16 x 128 tokens: forward, cross-entropy, backward, AdamW). "busy N" starts N
competing processes first, each a pure-Python spin loop (--competitor python) or torch matmuls
on torch's default threads (--competitor torch, like a second lmstack command). Medians over
--repeats after one warm-up. Why it matters: with more threads than free cores, every parallel
region of every op waits at its barrier for a thread the kernel has descheduled, and a decode
step is hundreds of tiny ops. Then --peak-runs fresh processes (half of them beside one busy
process) measure the MFU peak the old way (best of 5 matmuls) and with measure_peak_flops.
Results go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

# What the other processes run: a pure-Python loop (one core each), or torch matmuls on torch's
# default thread count (another lmstack command, a notebook), which competes far harder.
COMPETITORS = {
    "python": "while True: pass",
    "torch": "import torch\na = torch.randn(256, 256)\nwhile True: a @ a",
}
SPIN = COMPETITORS["python"]


def child(threads: int, tokens: int, repeats: int) -> dict:
    """Time one case in this process: seconds per generate and per training step."""
    import torch

    from lmstack.infer import Engine
    from lmstack.models import GPT, GPTConfig
    from lmstack.models.protocol import next_token_loss

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=8192, block_size=128, n_layer=4, n_head=4, n_embd=128,
                          position="rope", norm="rmsnorm", mlp="swiglu", bias=False))
    engine = Engine(model.eval(), None)
    prompt = list(range(1, 9))

    def generate() -> None:
        engine.generate(prompt, temperature=0, max_new_tokens=tokens, ignore_eos=True)

    x = torch.randint(0, 8192, (16, 129))  # (B, T+1)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> None:
        model.train()
        loss = next_token_loss(model(x[:, :-1]), x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.eval()

    from lmstack.models.metrics import measure_peak_flops

    return {"generate_s": _median(generate, repeats), "step_s": _median(step, repeats),
            "peak_gflops": measure_peak_flops(torch.device("cpu")) / 1e9}


def peak_child() -> dict:
    """The MFU denominator two ways in this process: the best of 5 back-to-back 1024 matmuls
    (how it was measured before) and measure_peak_flops (best of >= 10 and >= 0.5 s)."""
    import torch

    from lmstack.models.metrics import measure_peak_flops

    torch.set_num_threads(1)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(6):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return {"five": 2 * 1024**3 / best / 1e9, "robust": measure_peak_flops(torch.device("cpu")) / 1e9}


def _median(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_case(threads: int, busy: int, policy: str, args: argparse.Namespace) -> dict:
    """One case in a fresh interpreter, with `busy` competing processes running beside it."""
    env = dict(os.environ)
    if policy != "default":
        env["OMP_WAIT_POLICY"] = policy.upper()
    spinners = [subprocess.Popen([sys.executable, "-c", COMPETITORS[args.competitor]])
                for _ in range(busy)]
    time.sleep(1.0 if busy and args.competitor == "torch" else 0.0)  # let torch load first
    try:
        out = subprocess.run([sys.executable, __file__, "--child", str(threads), "--tokens",
                              str(args.tokens), "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True).stdout
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    return json.loads(out.splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    p.add_argument("--policies", nargs="+", default=["default", "passive"],
                   help="OMP_WAIT_POLICY: default (torch's, spins) or passive (sleeps)")
    p.add_argument("--competitor", choices=sorted(COMPETITORS), default="python",
                   help="what the busy processes run")
    p.add_argument("--tokens", type=int, default=60)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--peak-runs", type=int, default=6,
                   help="fresh processes measuring the MFU peak (half of them beside a busy one)")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak-child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.tokens, args.repeats)))
        return
    if args.peak_child:
        print(json.dumps(peak_child()))
        return
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"python {platform.python_version()}; {args.tokens} greedy tokens, medians of "
          f"{args.repeats}; busy processes run {args.competitor}")
    print(f"{'threads':>7} {'busy':>4} {'wait policy':>11} {'generate s':>10} {'tokens/s':>9} "
          f"{'train step s':>12} {'peak GFLOP/s':>11}")
    for policy in args.policies:
        for busy in args.busy:
            for threads in args.threads:
                r = run_case(threads, busy, policy, args)
                print(f"{threads:>7} {busy:>4} {policy:>11} {r['generate_s']:>10.3f} "
                      f"{args.tokens / r['generate_s']:>9.0f} {r['step_s']:>12.3f} "
                      f"{r['peak_gflops']:>11.1f}", flush=True)
    if args.peak_runs:
        peak_spread(args.peak_runs)


def peak_spread(runs: int) -> None:
    """The MFU denominator across fresh processes (1 thread), alone and beside a busy process."""
    for busy in (0, 1):
        spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(busy)]
        try:
            rs = [json.loads(subprocess.run([sys.executable, __file__, "--peak-child"], check=True,
                                            capture_output=True, text=True).stdout.splitlines()[-1])
                  for _ in range(runs // 2)]
        finally:
            for p in spinners:
                p.kill()
                p.wait()
        for key, name in (("five", "best of 5 matmuls"), ("robust", "measure_peak_flops")):
            vals = [r[key] for r in rs]
            print(f"peak, 1 thread, busy {busy}, {name:>18}: {min(vals):.1f}..{max(vals):.1f} "
                  f"GFLOP/s over {len(vals)} processes", flush=True)


if __name__ == "__main__":
    main()

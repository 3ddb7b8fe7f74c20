"""Post-training on a verifiable task, one measured story (issue 18): base -> SFT -> DPO, GRPO, PPO.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/posttrain.py            # every stage
    .venv/bin/python benchmarks/posttrain.py --stages score --models base sft      # re-score only

The task is lmstack/data/word_problems.py's: two-digit additions and subtractions worded as
chats, "answer with the number only", train and test from disjoint templates and operand
pairs; the reward is exact match of the reply (rewards.py's exact_answer). The model is
SmolLM2-135M-Instruct from its wheel. Each stage is one `lmstack` command in its own process,
its output kept under --out, so a stage already done is skipped on a rerun:

1. sft: full fine-tuning on 1,800 training chats (`lmstack sft`);
2. pairs: the SFT model samples k answers to each training prompt; a prompt with a right and a
   wrong answer gives a preference pair (chosen right, rejected wrong): DPO's and the reward
   model's data, built from the SFT model's own successes and failures;
3. dpo: `lmstack dpo` on those pairs, LoRA over the SFT model (reference: the SFT model, i.e.
   the policy with its adapters off);
4. grpo: `lmstack rl --algo grpo --reward exact_answer`, LoRA over the SFT model;
5. reward + ppo: `lmstack reward` on the pairs, then `lmstack rl --algo ppo --reward RM`;
6. score: each model's held-out greedy exact match, pass@1 and pass@k of k samples at
   temperature T (lmstack.eval.pass_at_k), and its KL to the SFT model: the exact KL of the
   next-token distributions, per token, over the model's own greedy answers to the test
   questions (rl_math.kl_to).

RL can only sharpen what the SFT model already samples: pass@k well above zero and greedy
accuracy well below 100% are what make the task fit (the score stage prints both for SFT).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from decode import (
    cpu_model,  # benchmarks/decode.py: run as a script, benchmarks/ is on the path
)

from lmstack.data.word_problems import exact_match, word_problems
from lmstack.eval.pass_at_k import mean_pass_at_k
from lmstack.infer import Engine
from lmstack.models.directory import (
    load_model,
    load_tokenizer,
    model_chat_template,
    model_eos_ids,
)
from lmstack.posttrain.sft_data import tokenize_record
from lmstack.posttrain.sft_run import answer_settings

BASE = "smollm2"


# ---- scoring ------------------------------------------------------------------------------

class Scorer:
    """Greedy and sampled answers of one model to records' questions, scored by exact match."""

    def __init__(self, model: torch.nn.Module, base: str | Path, max_new_tokens: int = 8) -> None:
        self.model, self.tok, self.template = model.eval(), load_tokenizer(base), model_chat_template(base)
        self.engine = Engine(model, self.tok, eos_ids=model_eos_ids(base))
        self.settings = answer_settings(self.template, self.tok, max_new_tokens)
        self._ids: dict[str, list[int]] = {}  # greedy, samples and the KL read the same prompts

    def prompts(self, records: list[dict]) -> list[list[int]]:
        """Each record's question as the chat's prompt ids (up to the assistant's reply)."""
        for r in records:
            key = json.dumps(r["messages"])
            if key not in self._ids:
                self._ids[key] = tokenize_record(r, self.tok, self.template).prompt_ids()
        return [self._ids[json.dumps(r["messages"])] for r in records]

    @torch.no_grad()
    def greedy(self, records: list[dict], batch: int = 50) -> list[str]:
        """The greedy reply to each record's question."""
        ids = self.prompts(records)
        return [c.text for i in range(0, len(ids), batch)
                for c in self.engine.generate(ids[i:i + batch], **self.settings)]

    @torch.no_grad()
    def samples(self, records: list[dict], k: int, temperature: float, seed: int = 0,
                batch: int = 25) -> list[list[str]]:
        """k sampled replies to each record's question (seeded)."""
        ids = self.prompts(records)
        settings = dict(self.settings, temperature=temperature, best_of=k, num_return_sequences=k,
                        seed=seed)
        return [[c.text for c in group] for i in range(0, len(ids), batch)
                for group in self.engine.generate(ids[i:i + batch], **settings)]


def right_counts(samples: list[list[str]], records: list[dict]) -> list[tuple[int, int]]:
    """(samples, right ones) per record."""
    return [(len(s), sum(exact_match(t, r) for t in s)) for s, r in zip(samples, records)]


@torch.no_grad()
def kl_per_token(model: torch.nn.Module, reference: torch.nn.Module, scorer: Scorer,
                 records: list[dict], replies: list[str]) -> float:
    """KL(model || reference) in nats per token over the replies' tokens (their own answers)."""
    from lmstack.posttrain.rl_math import kl_to

    total, count = 0.0, 0
    for prompt, reply in zip(scorer.prompts(records), replies):
        answer = scorer.tok.encode(reply)
        if not answer:
            continue
        ids = torch.tensor([prompt + answer])  # (1, T)
        labels = torch.full_like(ids, -100)
        labels[0, len(prompt) - 1:-1] = ids[0, len(prompt):]  # shifted: position t scores t + 1
        kl, n = kl_to(model, reference, (ids, labels))
        total, count = total + float(kl), count + n
    return total / max(count, 1)


def score(name: str, model, sft_model, records: list[dict], args) -> dict:
    """One model's row: greedy %, pass@1 and pass@k % of k samples, KL to the SFT model."""
    t0 = time.perf_counter()
    scorer = Scorer(model, BASE)
    greedy = scorer.greedy(records)
    counts = right_counts(scorer.samples(records, args.k, args.temperature), records)
    row = {"model": name,
           "greedy": 100 * sum(exact_match(t, r) for t, r in zip(greedy, records)) / len(records),
           "pass@1": 100 * mean_pass_at_k(counts, 1),
           f"pass@{args.k}": 100 * mean_pass_at_k(counts, args.k),
           "kl_to_sft": kl_per_token(model, sft_model, scorer, records, greedy)
           if sft_model is not None else float("nan")}
    row["seconds"] = time.perf_counter() - t0
    print(json.dumps(row), flush=True)
    return row


# ---- the stages ---------------------------------------------------------------------------

def lmstack(*argv: str) -> None:
    """Run one lmstack command in a child process; stop the benchmark if it fails."""
    cmd = [sys.executable, "-m", "lmstack.cli", *argv]
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.run(cmd).returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Write records one per line, atomically (temp file, then rename)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(path)
    return path


def build_pairs(sft_dir: Path, records: list[dict], k: int, temperature: float, seed: int) -> list[dict]:
    """Preference pairs from the SFT model's own samples: per prompt with a right and a wrong
    answer among k, one pair (a right one chosen, a wrong one rejected, picked seeded)."""
    scorer = Scorer(load_model(sft_dir), BASE)
    rng = random.Random(seed)
    pairs = []
    for r, group in zip(records, scorer.samples(records, k, temperature, seed=seed)):
        right = sorted({t.strip() for t in group if exact_match(t, r)})
        wrong = sorted({t.strip() for t in group if not exact_match(t, r) and t.strip()})
        if right and wrong:
            pairs.append({"prompt": r["messages"][:-1], "chosen": rng.choice(right),
                          "rejected": rng.choice(wrong)})
    return pairs


def stage_sft(out: Path, train: Path, args) -> Path:
    """Full fine-tuning of the base on the training chats: the SFT model every stage starts from."""
    sft = out / "sft"
    if not (sft / "model.safetensors").exists():
        lmstack("sft", "--model", BASE, "--data", str(train), "--out", str(sft), "--threads",
                str(args.threads), "--set", f"steps={args.sft_steps}", "batch_size=4",
                "block_size=128", "schedule.lr=5e-5", "schedule.min_lr=5e-6",
                "schedule.warmup_steps=10", f"eval_every={args.sft_steps}", "save_every=100",
                "progress=false", "precision=bf16", "optim.grad_clip=1.0")
    return sft


def stage_pairs(out: Path, sft: Path, train_records: list[dict], args) -> Path:
    """pairs.jsonl from the SFT model's samples on training prompts, and rl_prompts.jsonl."""
    path = out / "pairs.jsonl"
    if not path.exists():
        pairs = build_pairs(sft, train_records[:args.pair_prompts], args.k, args.temperature, args.seed)
        print(f"pairs: {len(pairs)} of {args.pair_prompts} prompts had a right and a wrong sample")
        write_jsonl(path, pairs)
    return path


ALL_LINEAR = "['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']"
LORA = ["peft.method=lora", "peft.r=16", "peft.alpha=32", f"peft.target_modules={ALL_LINEAR}"]


def common(args, steps: int, lr: float) -> list[str]:
    """The --set overrides every post-training stage shares."""
    return [f"steps={steps}", f"schedule.lr={lr}", f"schedule.min_lr={lr / 10}",
            "schedule.warmup_steps=0", "precision=bf16", "progress=false", "log_every=1",
            "optim.grad_clip=1.0", *LORA]


def stage_dpo(out: Path, sft: Path, pairs: Path, args) -> Path:
    """DPO (beta 0.1) on the SFT model's own pairs, LoRA over it: the reference is the SFT
    model itself (the adapters switched off)."""
    dpo = out / "dpo"
    if not (dpo / "adapter_model.safetensors").exists():
        lmstack("dpo", "--model", str(sft), "--data", str(pairs), "--out", str(dpo), "--threads",
                str(args.threads), "--set", *common(args, args.dpo_steps, args.dpo_lr),
                "batch_size=8", "block_size=128", "dpo.beta=0.1", f"eval_every={args.dpo_steps}",
                f"save_every={args.dpo_steps}")
    return dpo


def rl_settings(args) -> list[str]:
    """The rollout settings GRPO and PPO share: k samples of 8 prompts a step, short answers."""
    return [f"rl.k={args.k}", f"rl.prompts_per_step={args.rl_prompts}", "rl.max_new_tokens=8",
            f"rl.temperature={args.temperature}", "rl.eval_prompts=64", "block_size=128",
            f"eval_every={args.rl_steps // 2}", f"save_every={max(args.rl_steps // 4, 1)}"]


def stage_grpo(out: Path, sft: Path, train: Path, args) -> Path:
    """GRPO with the exact-answer reward, LoRA over the SFT model, beta 0 (no KL term)."""
    grpo = out / "grpo"
    if not (grpo / "adapter_model.safetensors").exists():
        lmstack("rl", "--algo", "grpo", "--reward", "exact_answer", "--model", str(sft),
                "--data", str(train), "--out", str(grpo), "--threads", str(args.threads),
                "--resume", "--set", *common(args, args.rl_steps, args.rl_lr), *rl_settings(args))
    return grpo


def stage_reward(out: Path, sft: Path, pairs: Path, args) -> Path:
    """A reward model (LoRA over the SFT model, merged into its directory) on the pairs."""
    rm = out / "reward"
    if not (rm / "reward_head.safetensors").exists():
        lmstack("reward", "--model", str(sft), "--data", str(pairs), "--out", str(rm), "--threads",
                str(args.threads), "--set", *common(args, args.dpo_steps, 1e-4), "batch_size=8",
                "block_size=128", f"eval_every={args.dpo_steps}", f"save_every={args.dpo_steps}")
    return rm


def stage_ppo(out: Path, sft: Path, train: Path, rm: Path, args) -> Path:
    """PPO against the reward model minus a KL penalty to the SFT model, LoRA over it."""
    ppo = out / "ppo"
    if not (ppo / "adapter_model.safetensors").exists():
        lmstack("rl", "--algo", "ppo", "--reward", str(rm), "--model", str(sft), "--data",
                str(train), "--out", str(ppo), "--threads", str(args.threads), "--resume", "--set",
                *common(args, args.rl_steps, args.rl_lr), *rl_settings(args), "rl.k=1",
                f"rl.prompts_per_step={args.rl_prompts * args.k}")
    return ppo


# ---- distillation: a student 4x smaller than the SFT model, four ways ------------------------

STUDENT = {"n_layer": 8, "n_embd": 384, "n_head": 6, "n_kv_head": 2, "intermediate_size": 1024,
           "block_size": 512}  # 31.5M parameters (18.9M of them the tied embedding): 4.3x fewer


def make_student(out: Path, teacher: Path, seed: int) -> Path:
    """A randomly initialized student in the teacher's architecture family, smaller, with the
    teacher's tokenizer and chat template (KD and GKD compare distributions token by token)."""
    from lmstack.models.directory import save_companions, save_model
    from lmstack.models.gpt import GPT, GPTConfig

    student = out / "student-init"
    if not (student / "model.safetensors").exists():
        torch.manual_seed(seed)
        config = GPTConfig.from_dict({**json.loads((teacher / "config.json").read_text()), **STUDENT})
        save_model(student, GPT(config))
        save_companions(teacher, student)
    return student


def stage_distill(out: Path, teacher: Path, train: Path, args) -> dict[str, Path]:
    """The student trained the same steps four ways: on the data alone (from scratch), on the
    teacher's own answers (data), on its token distributions (kd), on the student's samples
    scored by the teacher (gkd)."""
    student = make_student(out, teacher, args.seed)
    shared = [f"steps={args.distill_steps}", f"schedule.lr={args.distill_lr}",
              f"schedule.min_lr={args.distill_lr / 10}", "schedule.warmup_steps=20", "batch_size=8",
              "block_size=128", "precision=bf16", "progress=false", "optim.grad_clip=1.0",
              f"eval_every={args.distill_steps}", f"save_every={args.distill_steps}"]
    teach = ["--teacher", str(teacher)]
    runs = {"scratch": (["sft"], []),  # (command, its own settings)
            "data": (["distill", "--mode", "data", *teach], []),
            "kd": (["distill", "--mode", "kd", *teach], []),
            "gkd": (["distill", "--mode", "gkd", *teach], ["distill.max_new_tokens=8"])}
    dirs = {}
    for name, (command, own) in runs.items():
        dirs[name] = d = out / f"student-{name}"
        if not (d / "model.safetensors").exists():
            lmstack(*command, "--model", str(student), "--data", str(train), "--out", str(d),
                    "--threads", str(args.threads), "--resume", "--set", *shared, *own)
    return dirs


@torch.no_grad()
def answer_perplexity(model: torch.nn.Module, base: Path, records: list[dict]) -> float:
    """Perplexity of the records' answers (the assistant's tokens, end of turn included)."""
    import math

    from lmstack.posttrain.sft import sft_loss
    from lmstack.posttrain.sft_data import collate, pack

    tok, template = load_tokenizer(base), model_chat_template(base)
    examples = [tokenize_record(r, tok, template) for r in records]
    nats, count = 0.0, 0
    for i in range(0, len(examples), 25):
        rows = [row for e in examples[i:i + 25] for row in pack([e], 128)]
        loss, n = sft_loss(model.eval(), collate(rows, 128))
        nats, count = nats + float(loss), count + n
    return math.exp(nats / count)


def score_students(dirs: dict[str, Path], records: list[dict]) -> list[dict]:
    """Each student's held-out greedy exact match and answer perplexity."""
    rows = []
    for name, d in dirs.items():
        model = load_model(d)
        replies = Scorer(model, str(d)).greedy(records)
        rows.append({"student": name,
                     "greedy": 100 * sum(exact_match(t, r) for t, r in zip(replies, records)) / len(records),
                     "answer_ppl": answer_perplexity(model, d, records)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def tuned(sft_model, adapter: Path):
    """The SFT model with a stage's LoRA adapter merged into a copy."""
    import copy

    from lmstack.posttrain.peft.multi_lora import inference_adapter

    return inference_adapter(adapter)(copy.deepcopy(sft_model))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/bench-posttrain"))
    p.add_argument("--stages", nargs="+", default=["sft", "pairs", "dpo", "grpo", "reward", "ppo", "score", "distill"])
    p.add_argument("--models", nargs="+", default=["base", "sft", "dpo", "grpo", "ppo"],
                   help="what the score stage scores")
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--test", type=int, default=200)
    p.add_argument("--pair-prompts", type=int, default=1000)
    p.add_argument("--sft-steps", type=int, default=400)
    p.add_argument("--dpo-steps", type=int, default=100)
    p.add_argument("--dpo-lr", type=float, default=5e-5)
    p.add_argument("--rl-steps", type=int, default=60)
    p.add_argument("--rl-lr", type=float, default=3e-5)
    p.add_argument("--rl-prompts", type=int, default=8, help="prompts per RL step (x k samples)")
    p.add_argument("--distill-steps", type=int, default=300)
    p.add_argument("--distill-lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    train_records = word_problems(args.train, "train", args.seed)
    train = write_jsonl(args.out / "train.jsonl", train_records)
    test = word_problems(args.test, "test", args.seed)
    sft = stage_sft(args.out, train, args) if "sft" in args.stages else args.out / "sft"
    pairs = stage_pairs(args.out, sft, train_records, args) if "pairs" in args.stages else args.out / "pairs.jsonl"
    stages = {"dpo": lambda: stage_dpo(args.out, sft, pairs, args),
              "grpo": lambda: stage_grpo(args.out, sft, train, args),
              "reward": lambda: stage_reward(args.out, sft, pairs, args),
              "ppo": lambda: stage_ppo(args.out, sft, train, args.out / "reward", args)}
    for name, run in stages.items():
        if name in args.stages:
            run()
    if "distill" in args.stages:
        students = stage_distill(args.out, sft, train, args)
        rows = score_students(students, test)
        print(f"\n| student ({sum(p.numel() for p in load_model(students['scratch']).parameters()) / 1e6:.1f}M "
              "parameters) | greedy % | answer perplexity |")
        print("|---|---|---|")
        for r in rows:
            print(f"| {r['student']} | {r['greedy']:.1f} | {r['answer_ppl']:.3f} |")
    if "score" in args.stages:
        sft_model = load_model(sft)
        models = {"base": lambda: load_model(BASE), "sft": lambda: sft_model,
                  **{name: (lambda name=name: tuned(sft_model, args.out / name))
                     for name in ("dpo", "grpo", "ppo")}}
        rows = [score(name, models[name](), sft_model, test, args) for name in args.models]
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        print(f"\n{cpu_model()} x{os.cpu_count()}, torch {torch.__version__}, {args.threads} threads, {stamp}")
        print(f"| model | greedy % | pass@1 % | pass@{args.k} % | KL to SFT (nats/token) |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['model']} | {r['greedy']:.1f} | {r['pass@1']:.1f} | "
                  f"{r[f'pass@{args.k}']:.1f} | {r['kl_to_sft']:.4f} |")


if __name__ == "__main__":
    main()

"""Best-of-N (issue 18): held-out accuracy when the answer is the best of N samples by a reward
model, vs a random one of the N, vs the true reward (an oracle that knows the exact answer),
for N = 1, 4, 16.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/best_of_n.py --policy runs/sft --reward-model runs/rm
    .venv/bin/python benchmarks/best_of_n.py --policy runs/sft --reward-model runs/rm --data held_out.jsonl --json

Prompts: the held-out split of lmstack/data/word_problems.py (--prompts of them), or --data, a
JSONL file of {"prompt": "...", "answer": "..."} or {"messages": [...], "answer": "..."} lines.
Each prompt is rendered with the policy's chat template, as SFT trained it, and the policy draws
max(N) replies once (temperature --temperature, ending at the end of turn; sample j of prompt p
from seed + p·max(N) + j); for each N the first N of them are the candidates, so every column
reads the same samples:

- reward model: the candidate the reward model rewards most (posttrain/reward_ranking.py: the
  conversation with the reply, as its training pairs were laid out; ties go to the first drawn),
  what `lmstack generate/chat --best-of N --reward-model DIR` and `serve`'s best_of answer;
- random: one candidate drawn uniformly; its expected accuracy, the share of right candidates;
- oracle: a right candidate whenever there is one (the true reward): pass@N.

At N = 1 the three are the same number. A reward model earns its keep where it stands well
above random and closes part of the gap to the oracle.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstack.data.word_problems import exact_match, word_problems
from lmstack.errors import DataError
from lmstack.infer import Engine
from lmstack.models.directory import model_chat_template
from lmstack.posttrain.reward_ranking import load_reward_ranker
from lmstack.posttrain.sft_data import read_jsonl, tokenize_record
from lmstack.posttrain.sft_run import answer_settings
from lmstack.tokenizer.chat_template import ChatTemplate


@dataclass(frozen=True)
class Problem:
    """A held-out prompt (the conversation before the reply) and its exact answer."""

    messages: list[dict]
    answer: str

    def right(self, reply: str) -> bool:
        """The true reward: the reply is the answer (spaces and a final period aside)."""
        return exact_match(reply, {"messages": [{"role": "assistant", "content": self.answer}]})


def check_problem(record: object, where: str) -> dict:
    """A --data line: {prompt or messages, answer}; a DataError naming the line otherwise."""
    if not isinstance(record, dict) or "answer" not in record or not ({"prompt", "messages"} & set(record)):
        raise DataError(f"{where}: expected {{\"prompt\": \"...\", \"answer\": \"...\"}} or "
                        f"{{\"messages\": [...], \"answer\": \"...\"}}, got {str(record)[:80]}")
    return record


def load_problems(data: str | None, count: int, seed: int) -> list[Problem]:
    """--data's problems, or `count` held-out word problems."""
    if data is None:
        return [Problem(r["messages"][:-1], r["messages"][-1]["content"])
                for r in word_problems(count, "test", seed)]
    out = []
    for _, r in read_jsonl(data, check_problem, "best-of-N data file", "JSONL of {prompt|messages, answer}"):
        messages = r.get("messages") or [{"role": "user", "content": r["prompt"]}]
        out.append(Problem(list(messages), str(r["answer"])))
    return out


def in_draw_order(_prompt, _completion) -> float:
    """A constant best-of score: the stable sort keeps the samples as drawn (j from seed + j)."""
    return 0.0


def draw(engine: Engine, template: ChatTemplate, problems: list[Problem], k: int, temperature: float,
         max_new_tokens: int, seed: int) -> list[list[str]]:
    """k sampled replies per problem, in draw order: sample j of problem p from seed + p·k + j
    (one call per problem, its k rows decoded together), so no two samples share random numbers."""
    tok = engine.tokenizer
    settings = {**answer_settings(template, tok, max_new_tokens), "temperature": temperature,
                "best_of": k, "num_return_sequences": k}
    out: list[list[str]] = []
    for p, problem in enumerate(problems):
        record = {"messages": problem.messages + [{"role": "assistant", "content": problem.answer}]}
        prompt = tokenize_record(record, tok, template).prompt_ids()  # as SFT rendered it
        group = engine.generate(prompt, scorer=in_draw_order, seed=seed + p * k, **settings)
        out.append([c.text for c in (group if isinstance(group, list) else [group])])
    return out


def summarize(right: list[list[bool]], rewards: list[list[float]], ns: list[int]) -> list[dict]:
    """Accuracy of each way of choosing among the first N samples, for each N.

    >>> rows = summarize([[False, True], [False, False]], [[0.1, 0.9], [0.5, 0.2]], [1, 2])
    >>> [(r["n"], r["reward_model"], r["random"], r["oracle"]) for r in rows]
    [(1, 0.0, 0.0, 0.0), (2, 0.5, 0.25, 0.5)]
    """
    rows = []
    for n in ns:
        picks = [max(range(n), key=lambda j: (r[j], -j)) for r in rewards]  # ties: the first drawn
        rows.append({"n": n,
                     "reward_model": sum(rt[j] for rt, j in zip(right, picks)) / len(right),
                     "random": sum(sum(rt[:n]) / n for rt in right) / len(right),
                     "oracle": sum(any(rt[:n]) for rt in right) / len(right),
                     "chosen_reward": sum(r[j] for r, j in zip(rewards, picks)) / len(rewards)})
    return rows


def run(args: argparse.Namespace) -> dict:
    """Draw, score and tabulate; the whole result as a dict (what --json prints)."""
    torch.manual_seed(args.seed)
    engine, template = Engine.load(args.policy), model_chat_template(args.policy)
    ranker = load_reward_ranker(args.reward_model, engine.tokenizer, args.policy, template)
    problems = load_problems(args.data, args.prompts, args.seed)
    if not problems:
        raise DataError("no prompts to score; give --data a non-empty file or --prompts above 0")
    replies = draw(engine, template, problems, max(args.n), args.temperature, args.max_new_tokens,
                   args.seed)
    right = [[p.right(r) for r in rs] for p, rs in zip(problems, replies)]
    rewards = [[ranker.chat_reward(p.messages, r) for r in rs] for p, rs in zip(problems, replies)]
    settings = {k: getattr(args, k) for k in ("policy", "reward_model", "data", "temperature",
                                              "max_new_tokens", "seed")}
    return {"settings": {**settings, "prompts": len(problems)},
            "rows": summarize(right, rewards, sorted(args.n)),
            "replies": replies, "right": right, "rewards": rewards}


def table(result: dict) -> str:
    """The rows as one markdown table (accuracy in percent)."""
    lines = ["| N | reward model % | random % | oracle (pass@N) % | mean reward of the choice |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['n']} | {100 * r['reward_model']:.1f} | {100 * r['random']:.1f} | "
                     f"{100 * r['oracle']:.1f} | {r['chosen_reward']:.3f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the policy model directory (an SFT model)")
    p.add_argument("--reward-model", required=True, help="a reward model directory (lmstack reward)")
    p.add_argument("--data", default=None, help="JSONL of {prompt|messages, answer} (default: word problems)")
    p.add_argument("--prompts", type=int, default=200, help="held-out word problems (without --data)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 4, 16], help="candidates per prompt")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="print the result as JSON (with every sample)")
    args = p.parse_args(argv)
    if min(args.n) < 1 or args.temperature <= 0:
        p.error("--n must be positive and --temperature above 0 (best-of-N samples)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(args)
    if args.json:
        print(json.dumps(result))
        return
    s = result["settings"]
    print(f"# {datetime.date.today()} {platform.processor() or platform.machine()}, {args.threads} "
          f"threads; policy {s['policy']}, reward model {s['reward_model']}, {s['prompts']} prompts "
          f"({Path(s['data']).name if s['data'] else 'word problems, test split'}), temperature "
          f"{s['temperature']}, seed {s['seed']}")
    print(table(result))


if __name__ == "__main__":
    sys.exit(main())

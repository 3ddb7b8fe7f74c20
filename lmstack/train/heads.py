"""Train Medusa heads on a frozen model: `lmstack train-heads`.

    lmstack train-heads --model runs/spec-bench/target --data runs/spec-bench/data --heads 4 --steps 300
    lmstack train-heads --model runs/quickstart --data notes.txt src/*.py --heads 3 --max-minutes 2

The base model is frozen (no gradient, eval mode); only the K heads (lmstack/models/medusa_heads.py)
learn. Each batch of windows x (B, T) goes once through the base model for its last hidden
states h (B, T, C) and logits; head k at position t is trained to predict token t+k+1:

- `--loss distill` (default; Medusa-2's self-distillation): cross-entropy against the BASE
  model's own distribution at position t+k, i.e. what the base would say about token t+k+1.
  Decoding accepts a proposal only if it equals the base's choice, so this is the quantity
  that matters, and it needs no labels (a weak base model's guesses are matched too);
- `--loss data` (Medusa-1): cross-entropy against the data's token x[t+k+1].

`--data` is a token-shard directory (`lmstack data prepare`; its train split is read) or text
files (encoded with the model's tokenizer.json, joined with <|endoftext|>). The log reports,
per head, top-1 agreement with the base model's argmax at its position (the chance that head's
proposal is right when the earlier ones were). The heads are saved next to the model (or in
--out) as medusa_heads.safetensors + medusa_config.json, each written atomically.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lmstack.errors import ConfigError, DataError
from lmstack.models.medusa_heads import HEADS_WEIGHTS, MedusaHeads, save_heads
from lmstack.models.protocol import next_token_loss
from lmstack.train.heads_config import HeadsTrainConfig
from lmstack.train.schedule import ScheduleConfig, lr_at


def _batches(cfg: HeadsTrainConfig, tok, block_size: int):
    """An endless iterator of (B, T+1) int64 windows from the shards or text files."""
    paths = [Path(p) for p in cfg.data]
    if len(paths) == 1 and (paths[0] / "manifest.json").exists():
        from lmstack.data.loader import TokenLoader

        loader = TokenLoader(paths[0], "train", cfg.batch_size, block_size + 1, seed=cfg.seed,
                             tokenizer=tok)
        while True:
            x, y = loader.next_batch()
            yield torch.from_numpy(np.concatenate([x[:, :1], y], axis=1))
    from lmstack.tokenizer import ENDOFTEXT

    if tok is None:
        raise ConfigError("text --data needs the model's tokenizer.json to encode it; "
                          "pass a token-shard directory instead")
    ids: list[int] = []
    for p in paths:
        if not p.is_file():
            raise DataError(f"--data {p} is neither a shard directory (with manifest.json) nor a file")
        ids += tok.encode_ordinary(p.read_text(encoding="utf-8", errors="replace"))
        ids += [tok.special_tokens[ENDOFTEXT]] if ENDOFTEXT in tok.special_tokens else []
    if len(ids) < block_size + 2:
        raise DataError(f"--data holds {len(ids)} tokens, fewer than one window of "
                        f"{block_size + 1}; give more text or a smaller --block-size")
    data = torch.tensor(ids, dtype=torch.long)
    g = torch.Generator().manual_seed(cfg.seed)
    while True:
        starts = torch.randint(0, len(ids) - block_size - 1, (cfg.batch_size,), generator=g)
        yield torch.stack([data[s:s + block_size + 1] for s in starts.tolist()])


def head_losses(heads: MedusaHeads, hidden: torch.Tensor, base_logits: torch.Tensor,
                x: torch.Tensor, loss: str) -> tuple[torch.Tensor, list[float]]:
    """Mean loss over heads and positions, and each head's top-1 agreement with the base's
    argmax. hidden (B, T, C) and base_logits (B, T, V) are the base model's at x (B, T+1)'s
    first T positions; head k at t is scored against position t+k (token t+k+1)."""
    T = hidden.size(1)
    logits = heads(hidden)  # (B, T, K, V)
    total, agree = 0.0, []
    teacher = base_logits.float()
    for k in range(1, heads.config.num_heads + 1):
        student = logits[:, :T - k, k - 1].float()                       # (B, T-k, V)
        if loss == "distill":
            target = F.softmax(teacher[:, k:], dim=-1)
            total = total + -(target * F.log_softmax(student, dim=-1)).sum(-1).mean()
        else:
            y = x[:, k + 1:T + 1]
            total = total + next_token_loss(student, y)
        agree.append(float((student.argmax(-1) == teacher[:, k:].argmax(-1)).float().mean()))
    return total / heads.config.num_heads, agree


def train_heads(cfg: HeadsTrainConfig) -> dict:
    """Train heads on the frozen model and save them; return the final metrics."""
    from lmstack.models.directory import load_model
    from lmstack.tokenizer import Tokenizer

    cfg.check()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    model = load_model(cfg.model)
    if not hasattr(model, "hidden"):
        raise ConfigError(f"{cfg.model}: Medusa heads need a GPT (a model with a last hidden "
                          "state); LSTM/GRU and n-gram models are not supported")
    model.eval().requires_grad_(False)
    ctx = model.config.block_size
    block = min(cfg.block_size, ctx - 1)
    tok_path = Path(cfg.model) / "tokenizer.json"
    tok = Tokenizer.load(tok_path) if tok_path.exists() else None
    heads = MedusaHeads.for_model(model, cfg.heads, cfg.layers).train()
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = ScheduleConfig(lr=cfg.lr, min_lr=cfg.lr / 10, warmup_steps=min(20, cfg.steps // 10),
                           total_steps=cfg.steps).check()
    batches = _batches(cfg, tok, block)
    start = time.perf_counter()
    history: list[dict] = []
    step = 0
    for step in range(cfg.steps):
        if cfg.max_minutes is not None and time.perf_counter() - start > 60 * cfg.max_minutes:
            break
        x = next(batches)
        with torch.no_grad():
            hidden = model.hidden(x[:, :-1])
            base_logits = model.lm_head(hidden)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, sched)
        loss, agree = head_losses(heads, hidden, base_logits, x, cfg.loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(heads.parameters(), 1.0)
        opt.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ConfigError(f"train-heads: the loss became {value} at step {step}; lower --lr")
        record = {"step": step, "loss": value, "agree": agree,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        if cfg.progress and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            print(f"step {step:5d}  loss {value:.3f}  top-1 agreement with the base per head "
                  + " ".join(f"{a:.2f}" for a in agree), flush=True)
    out = Path(cfg.out or cfg.model)
    save_heads(out, heads.eval())
    tail = history[-10:]
    result = {"steps": len(history), "seconds": time.perf_counter() - start,
              "first_loss": sum(r["loss"] for r in history[:5]) / max(len(history[:5]), 1),
              "loss": sum(r["loss"] for r in tail) / max(len(tail), 1),
              "agree": [sum(r["agree"][k] for r in tail) / max(len(tail), 1)
                        for k in range(cfg.heads)],
              "out": str(out / HEADS_WEIGHTS)}
    if cfg.progress:
        print(f"trained {cfg.heads} Medusa heads for {result['steps']} steps in "
              f"{result['seconds']:.0f} s -> {result['out']}", flush=True)
    return result


# ---- the command line: its flags are in train/commands.py (read without torch by --help) -----


def cmd_train_heads(args: argparse.Namespace) -> None:
    """`lmstack train-heads`: train Medusa heads on a frozen model (cli.py applies --threads)."""
    train_heads(HeadsTrainConfig(
        model=args.model, data=list(args.data), out=args.out, heads=args.heads, layers=args.layers,
        steps=args.steps, batch_size=args.batch_size, block_size=args.block_size, lr=args.lr,
        loss=args.loss, max_minutes=args.max_minutes, seed=args.seed, progress=not args.quiet))

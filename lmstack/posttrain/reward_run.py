"""`lmstack reward`: a reward model trained on preference pairs with the Bradley–Terry loss.

    lmstack reward --model runs/sft --data pairs.jsonl --out runs/rm [--config rm.toml]
                   [--set peft.method=lora steps=300 val_fraction=0.1] [--resume]

The model is the base LM with a scalar head on its last real token (reward_model.py's
RewardModel); the loss per pair is −log σ(r(x, y_w) − r(x, y_l)) (Bradley & Terry 1952, as in
InstructGPT, Ouyang et al. 2022), averaged over the step's pairs. The pieces:

1. the base and its tokenizer and chat template, as `lmstack sft` loads them (sft_run.py);
2. the pairs (pair_loader.py): every JSONL line checked and rendered, a seeded `val_fraction`
   held out (or `val_data`), each side cut to `block_size`, dealt by PairLoader;
3. the method (`peft.method`): `full` (every backbone weight trains) or `lora` (adapters on a
   frozen backbone); the head always trains, the unused LM head never does;
4. the trainer's loop with pair_objective.py's hooks: each logged step carries the step's
   accuracy, margin and mean chosen/rejected rewards; validation gives val_loss, val_accuracy
   and val_margin on the held-out pairs; checkpoints and `--resume` are exact.

OUT is a reward model directory (reward_model.save_reward_model: the backbone, LoRA merged in,
plus reward_head.safetensors, the tokenizer and chat template): `load_reward_model(OUT)` reads
it, `reward_scorer` ranks best-of-N samples with it, `lmstack rl --algo ppo --reward OUT`
trains against it. Plus train_state.pt, train_config.json, log.jsonl and sft_summary.json.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from lmstack.models.directory import save_companions
from lmstack.posttrain.pair_loader import PairLoader, load_pair_data
from lmstack.posttrain.pair_objective import pair_objective
from lmstack.posttrain.peft.lora import lora_layers, unload_lora
from lmstack.posttrain.preference_loss import PreferenceOutput
from lmstack.posttrain.reward_config import RewardConfig
from lmstack.posttrain.reward_model import (
    RewardModel,
    bradley_terry_loss,
    pair_rewards,
    save_reward_model,
)
from lmstack.posttrain.sft_run import (
    apply_method,
    make_loaders,
    posttrain_run,
    write_summary,
)
from lmstack.tokenizer import Tokenizer
from lmstack.train import distributed
from lmstack.train.loop import TrainResult, prepare_run, run_loop


def reward_score(model: nn.Module, batch: Sequence[torch.Tensor]) -> PreferenceOutput:
    """Per pair of a collate_pairs batch: the Bradley–Terry loss and the two rewards (B,)."""
    input_ids, _, lengths = batch[:3]
    chosen, rejected = pair_rewards(model, input_ids, lengths)  # (B,), (B,)
    return PreferenceOutput(bradley_terry_loss(chosen, rejected), chosen, rejected)


def freeze_lm_head(backbone: nn.Module) -> None:
    """A reward model never reads the LM head: it stops training, unless it is the embedding
    too (tied weights), which the backbone does read."""
    head = getattr(backbone, "lm_head", None)
    if head is None:
        return
    tied = any(p is head.weight for name, p in backbone.named_parameters()
               if not name.startswith("lm_head."))  # a shared tensor is listed once, as wte's
    if not tied:
        head.requires_grad_(False)


def reward_writer(cfg: RewardConfig, tok: Tokenizer) -> Callable[[Path, RewardModel], None]:
    """The checkpoints' write_model: a reward model directory, LoRA merged into a copy (the
    training model keeps its adapters, so a resumed run goes on from the same numbers)."""
    def write(out: Path, model: RewardModel) -> None:
        if lora_layers(model):
            model = copy.deepcopy(model)
            unload_lora(model.backbone)
        save_reward_model(out, model, tok)
        save_companions(cfg.base_model, out, tok)  # the chat template the scorer renders with
    return write


def train_reward(cfg: RewardConfig) -> TrainResult:
    """Run (or resume) the reward-model training cfg describes; returns the final metrics."""
    return posttrain_run(cfg, _train_reward)


def _train_reward(cfg: RewardConfig, d: distributed.Dist, backbone: nn.Module, tok: Tokenizer
                  ) -> TrainResult:
    data = load_pair_data(cfg, tok)
    backbone, objective = apply_method(backbone, cfg, tok)  # before any write: bad targets fail here
    freeze_lm_head(backbone)
    model = RewardModel(backbone)  # a new head: trains with every method
    objective = pair_objective(dataclasses.replace(objective, write_model=reward_writer(cfg, tok)),
                               reward_score, d)
    train, val = make_loaders(cfg, d, data.train, data.val, data.row_len, PairLoader)
    if d.is_main:
        print(data.describe())
    write_summary(cfg, model, d, pairs=len(data.train), val_pairs=len(data.val),
                  cut=data.report.cut, dropped=len(data.report.dropped))
    run = prepare_run(cfg, d, Path(cfg.out_dir), tok, model, train, val, objective)
    return run_loop(run)


def next_step(cfg: RewardConfig, result: TrainResult) -> str:
    """How to use the reward model a run wrote."""
    out = result.out_dir.as_posix()
    return (f"use it: lmstack rl --algo ppo --model {cfg.base_model} --reward {out}, or rank "
            f"samples with lmstack.posttrain.reward_model.load_reward_model({out!r})")

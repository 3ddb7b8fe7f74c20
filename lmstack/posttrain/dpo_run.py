"""`lmstack dpo`: preference optimization of a language model on pairs, without RL.

    lmstack dpo --model runs/sft --data pairs.jsonl --out runs/dpo [--reference runs/sft]
                [--set dpo.loss=dpo dpo.beta=0.1 peft.method=lora steps=300] [--resume]

DPO (Rafailov et al. 2023) trains the policy π directly on (prompt, chosen, rejected): with
h = log π(y_w)/π_ref(y_w) − log π(y_l)/π_ref(y_l), the loss −log σ(β h) raises the chosen
reply's likelihood relative to the rejected one's, measured against a frozen reference π_ref
(the starting model), which keeps the policy near it. `dpo.loss` picks IPO, SimPO or ORPO
instead (preference_loss.py; the last two need no reference). The pieces:

1. the base (the policy's start), its tokenizer and chat template, as `lmstack sft` loads them;
2. the reference (dpo, ipo): `reference` (a model of the same vocabulary and tokenizer), or by
   default the base itself — a frozen copy, or with LoRA (and QLoRA) the policy with its
   adapters switched off, the base exactly, with no second copy (reference.py);
3. the pairs (pair_loader.py) and the method (`peft.method`, as for SFT);
4. the trainer's loop with pair_objective.py's hooks: the loss per pair, each logged step's
   mean chosen/rejected implicit rewards (β log π/π_ref), margin and accuracy; validation
   gives val_loss, val_accuracy and val_margin on the held-out pairs; exact `--resume`.

OUT is what `lmstack sft` writes for the same method: a model directory (`full`) or an adapter
directory (PEFT), plus train_state.pt, train_config.json, log.jsonl and sft_summary.json.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.infer.quantize import dequantize_model
from lmstack.models.directory import (
    load_model,
    load_tokenizer,
    model_chat_template,
    model_eos_ids,
)
from lmstack.posttrain.dpo_config import DPOConfig
from lmstack.posttrain.pair_loader import PairLoader, load_pair_data
from lmstack.posttrain.pair_objective import PairScore, pair_objective
from lmstack.posttrain.preference_loss import (
    PreferenceLossConfig,
    PreferenceOutput,
    method,
)
from lmstack.posttrain.reference import (
    batch_preference_loss,
    check_reference,
    frozen_copy,
)
from lmstack.posttrain.sft_run import (
    apply_method,
    make_loaders,
    posttrain_run,
    sampler,
    write_summary,
)
from lmstack.tokenizer import Tokenizer
from lmstack.train import distributed
from lmstack.train.loop import TrainResult, prepare_run, run_loop

ADAPTERS_OFF = ("lora", "qlora")  # methods whose policy, adapters off, is its own reference


def load_reference(cfg: DPOConfig, base: nn.Module, tok: Tokenizer) -> nn.Module | None:
    """The frozen reference, taken before the method changes the base: `cfg.reference`, a
    copy of the base, or None where the loss needs none or the adapters-off policy serves."""
    if not method(cfg.dpo.loss).needs_reference:
        return None
    if cfg.reference is None:
        return None if cfg.peft.method in ADAPTERS_OFF else frozen_copy(base)
    ref_tok = load_tokenizer(cfg.reference)
    reference = dequantize_model(load_model(cfg.reference))
    check_reference(base, reference)
    if ref_tok is not None and ref_tok != tok:
        raise ConfigError(f"the reference {cfg.reference} has another tokenizer than the base "
                          f"{cfg.base_model}, so it would score other tokens; the reference must "
                          "be the policy's starting model (e.g. the SFT run it was trained from)")
    reference.requires_grad_(False)
    return reference.eval()


def dpo_score(loss: PreferenceLossConfig, reference: nn.Module | None) -> PairScore:
    """Per pair of a collate_pairs batch: the configured loss and the implicit rewards."""
    def score(model: nn.Module, batch: Sequence[torch.Tensor]) -> PreferenceOutput:
        return batch_preference_loss(model, batch, loss, reference)[2]
    return score


def dpo(cfg: DPOConfig) -> TrainResult:
    """Run (or resume) the preference optimization cfg describes; returns the final metrics."""
    if cfg.reference is not None and Path(cfg.out_dir).resolve() == Path(cfg.reference).resolve():
        raise ConfigError(f"out_dir {cfg.out_dir} is the reference model's directory; training "
                          "would overwrite it. Give another --out")
    return posttrain_run(cfg, _dpo)


def _dpo(cfg: DPOConfig, d: distributed.Dist, model: nn.Module, tok: Tokenizer) -> TrainResult:
    data = load_pair_data(cfg, tok)
    reference = load_reference(cfg, model, tok)
    model, objective = apply_method(model, cfg, tok)  # before any write: bad targets fail here
    if reference is not None:
        reference.to(d.device)
    objective = pair_objective(objective, dpo_score(cfg.dpo, reference), d)
    train, val = make_loaders(cfg, d, data.train, data.val, data.row_len, PairLoader)
    if d.is_main:
        kind = ("none" if not method(cfg.dpo.loss).needs_reference else
                cfg.reference or ("the base (adapters off)" if reference is None else "the base (frozen copy)"))
        print(f"{data.describe()}\nloss: {cfg.dpo.loss}, beta {cfg.dpo.strength}; reference: {kind}")
    write_summary(cfg, model, d, pairs=len(data.train), val_pairs=len(data.val),
                  cut=data.report.cut, dropped=len(data.report.dropped), loss=cfg.dpo.loss,
                  beta=cfg.dpo.strength, reference=cfg.reference)
    run = prepare_run(cfg, d, Path(cfg.out_dir), tok, model, train, val, objective)
    prompts = [p.chosen.prompt_ids() for p in data.val[:cfg.max_samples]]
    run.sample = sampler(prompts, model_chat_template(cfg.base_model), model_eos_ids(cfg.base_model))
    return run_loop(run)

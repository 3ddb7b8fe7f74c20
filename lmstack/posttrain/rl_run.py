"""`lmstack rl`: reinforcement learning of a language model on its own samples, GRPO or PPO.

    lmstack rl --algo grpo --reward exact_answer --model runs/sft --data prompts.jsonl --out runs/grpo
               [--set rl.k=8 rl.prompts_per_step=8 rl.beta=0 peft.method=lora steps=100] [--resume]
    lmstack rl --algo ppo --reward runs/rm --model runs/sft --data prompts.jsonl --out runs/ppo

GRPO (Shao et al. 2024, "DeepSeekMath" §4.1) samples k completions per prompt, rewards each
(a verifiable Python reward, or a reward model), and raises the likelihood of those above their
group's mean, with PPO's clipped ratio and an optional KL to the reference; no value model. PPO
(Ouyang et al. 2022, "InstructGPT"; Schulman et al. 2017) learns a value head beside the policy
and per-token advantages by GAE, from the reward minus β·KL to the reference. The pieces:

1. the base (the policy's start) as `lmstack sft` loads it, and the method (peft.method full,
   lora or qlora); the reference is a frozen copy of the base, or with LoRA the policy with its
   adapters switched off (reference.py), kept only where it is used (beta > 0, rl.reference_kl);
2. the prompts (rl_data.py) and the reward (rl_reward.py);
3. the rollout loader (rl_loader.py): samples through the engine, scores, old/ref
   log-probabilities, advantages, each rollout batch used for `rl.epochs` optimizer steps;
4. the trainer's loop with rl_objective.py's loss, count, report (reward, accuracy, KL, clip
   fraction, skipped rewards, completion length in log.jsonl) and evaluate (greedy held-out
   accuracy: val_accuracy, val_loss = 1 - accuracy; -val_reward for a reward model); exact `--resume`.

OUT is what `lmstack sft` writes for the same method (a model directory, or an adapter); PPO
adds value_head.safetensors (the trained value head; `--resume` reads train_state.pt).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from lmstack.atomic import atomic_open
from lmstack.errors import ConfigError, DataError
from lmstack.models.directory import model_chat_template, model_eos_ids
from lmstack.posttrain.reference import frozen_copy
from lmstack.posttrain.rl_config import RLConfig
from lmstack.posttrain.rl_data import PromptLoader, RLPrompt, load_rl_prompts
from lmstack.posttrain.rl_loader import RolloutLoader, RolloutMaker
from lmstack.posttrain.rl_objective import (
    PolicyValue,
    RLStats,
    language_model,
    make_evaluate,
    rl_loss_fn,
    rollout_count,
)
from lmstack.posttrain.rl_reward import load_scorer
from lmstack.posttrain.sft_run import (
    answer_settings,
    apply_method,
    hold_out,
    posttrain_run,
    sampler,
    write_summary,
)
from lmstack.tokenizer import Tokenizer
from lmstack.train import distributed
from lmstack.train.loop import TrainResult, prepare_run, run_loop
from lmstack.train.objective import Objective

VALUE_HEAD = "value_head.safetensors"
ADAPTERS_OFF = ("lora", "qlora")  # methods whose policy, adapters off, is its own reference


def rl(cfg: RLConfig) -> TrainResult:
    """Run (or resume) the RL fine-tuning cfg describes; returns the final metrics."""
    if cfg.reward_model and Path(cfg.out_dir).resolve() == Path(cfg.reward).resolve():
        raise ConfigError(f"out_dir {cfg.out_dir} is the reward model's directory; training "
                          "would overwrite it. Give another --out")
    return posttrain_run(cfg, _rl)


def load_prompts(cfg: RLConfig, tok: Tokenizer) -> tuple[list[RLPrompt], list[RLPrompt], str]:
    """(training prompts, held-out prompts, a line on what was dropped)."""
    template = model_chat_template(cfg.base_model)
    room = cfg.block_size - cfg.rl.max_new_tokens
    needs_answer = cfg.reward == "exact_answer"
    prompts, drops = load_rl_prompts(cfg.data, tok, template, room, needs_answer)
    if cfg.val_data is not None:
        held, _ = load_rl_prompts(cfg.val_data, tok, template, room, needs_answer)
    else:
        prompts, held = hold_out(prompts, cfg)
    if not prompts:
        raise DataError(f"{cfg.data}: no prompt is left to train on ({drops}); raise block_size "
                        f"(now {cfg.block_size}), lower rl.max_new_tokens or val_fraction, or add prompts")
    return prompts, held, str(drops)


def value_writer(write):
    """PPO's write_model: the policy as its method writes it, and the value head beside it."""
    def write_model(out: Path, model: nn.Module) -> None:
        write(out, model.policy)
        head = {k: v.detach().cpu().contiguous() for k, v in model.value_head.state_dict().items()}
        with atomic_open(Path(out) / VALUE_HEAD) as f:
            save_file(head, f.name, metadata={"format": "lmstack-value-head"})
    return write_model


def build_policy(cfg: RLConfig, base: nn.Module, tok: Tokenizer
                 ) -> tuple[nn.Module, nn.Module | None, Objective]:
    """(the model to train, the frozen reference or None, the method's Objective); the
    reference is taken from the base before the method changes it."""
    use_reference = cfg.rl.beta > 0 or cfg.rl.reference_kl
    reference = frozen_copy(base) if use_reference and cfg.peft.method not in ADAPTERS_OFF else None
    policy, objective = apply_method(base, cfg, tok)
    if cfg.algo == "ppo":
        model = PolicyValue(policy)
        return model, reference, dataclasses.replace(objective,
                                                     write_model=value_writer(objective.write_model))
    return policy, reference, objective


def rollout_settings(cfg: RLConfig, tok: Tokenizer) -> tuple[dict, dict]:
    """(sampling settings of the rollouts, greedy settings of evaluation): the template's
    end of turn stops both."""
    greedy = answer_settings(model_chat_template(cfg.base_model), tok, cfg.rl.max_new_tokens)
    return {**greedy, "temperature": cfg.rl.temperature, "top_p": cfg.rl.top_p}, greedy


def _rl(cfg: RLConfig, d: distributed.Dist, base: nn.Module, tok: Tokenizer) -> TrainResult:
    train, held, dropped = load_prompts(cfg, tok)
    if len(train) < cfg.rl.prompts_per_step * d.world_size:
        raise ConfigError(f"{len(train)} training prompts are fewer than one step's "
                          f"rl.prompts_per_step={cfg.rl.prompts_per_step} x {d.world_size} ranks; "
                          "lower rl.prompts_per_step or add prompts")
    model, reference, objective = build_policy(cfg, base, tok)  # bad targets fail before writes
    if reference is not None:
        reference.to(d.device)
    model.to(d.device)
    scorer = load_scorer(cfg, language_model(model), tok, d.device)
    sampling, greedy = rollout_settings(cfg, tok)
    eos_ids = model_eos_ids(cfg.base_model)
    stats = RLStats()
    maker = RolloutMaker(model, reference, cfg.rl.beta > 0 or cfg.rl.reference_kl, scorer, tok,
                         sampling, eos_ids, cfg, d.device, stats, d.rank, d.is_main)
    loader = RolloutLoader(PromptLoader(train, cfg.rl.prompts_per_step, cfg.seed, d.rank, d.world_size),
                           maker, cfg.rl.epochs, cfg.grad_accum)
    if not (held and cfg.eval_every):
        cfg.eval_every = 0
    objective = dataclasses.replace(
        objective, loss_fn=rl_loss_fn(cfg.algo, cfg.rl, stats), count=rollout_count(cfg.rl.average),
        report=stats.report,
        evaluate=make_evaluate(held, scorer, tok, greedy, eos_ids, d, cfg.rl.eval_prompts))
    if d.is_main:
        kind = ("none" if not maker.use_reference else
                "the base (adapters off)" if reference is None else "the base (frozen copy)")
        print(f"data: {len(train)} training prompts, {len(held)} held out; {dropped}\n"
              f"{cfg.algo}: k={cfg.rl.k}, {cfg.rl.prompts_per_step} prompts per step, "
              f"{cfg.rl.epochs} step(s) per rollout batch, beta {cfg.rl.beta}; reward: "
              f"{scorer.name}; reference: {kind}")
    write_summary(cfg, model, d, prompts=len(train), val_prompts=len(held),
                  algo=cfg.algo, reward=cfg.reward, k=cfg.rl.k)
    run = prepare_run(cfg, d, Path(cfg.out_dir), tok, model, loader, None, objective)
    sample = sampler([p.ids for p in held[:cfg.max_samples]], model_chat_template(cfg.base_model),
                     eos_ids, cfg.rl.max_new_tokens)
    run.sample = lambda m, t: sample(language_model(m), t)
    return run_loop(run)

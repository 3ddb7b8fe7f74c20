"""Pretraining by teacher forcing: next-token cross-entropy at every position, one forward pass.

    lmstack train --config configs/quickstart.toml [--set steps=500 ...] [--resume]
    torchrun --nproc_per_node 2 -m lmstack.cli train --config ... --set parallel=ddp

Teacher forcing (Williams & Zipser 1989): the model reads the true prefix `x[:, :t+1]` and is
scored on the true next token `y[:, t]`, for every t of every sequence at once — for a causal
transformer a single forward pass gives all T predictions. The same loop trains RNNs, which may
optionally use scheduled sampling (Bengio et al. 2015): with a probability that rises over
training, an input token is replaced by the model's own sample from a first, gradient-free pass
(the one-pass variant of Duckworth et al. 2019) — it costs one extra forward per step. The
n-gram model has no gradients: "training" it counts the training tokens.

Per step: learning rate from the schedule; `grad_accum` micro-batches (under bf16/fp16 autocast
if asked, gradients synchronized only on the last under DDP/FSDP); gradient clipping; AdamW.
Logged to OUT/log.jsonl and a progress bar: loss, tokens/s and MFU (model FLOPs per second over
this device's measured dense-matmul rate), both over training time only (validation, samples
and checkpoints excluded); every `eval_every` steps validation loss, perplexity and
bits per byte; every `save_every` a checkpoint (checkpoint.py), and `--resume` continues exactly.
With `target_val_loss` set, the run stops (and saves) at the first validation at or below it:
"time to a given loss" then reads off the log, whose records carry `elapsed_s`, the wall time
since the loop started, validations included, when the record was written.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lmstack.data.loader import TokenLoader
from lmstack.errors import ConfigError
from lmstack.models import (
    NGramLM,
    build_model,
    config_from_dict,
    flops_per_token,
    num_params,
)
from lmstack.models.directory import nonfinite_weight
from lmstack.models.metrics import measure_peak_flops
from lmstack.tokenizer import Tokenizer
from lmstack.train import checkpoint as ckpt
from lmstack.train import distributed
from lmstack.train.clock import Clock
from lmstack.train.config import TrainConfig
from lmstack.train.objective import (
    Objective,
    autocast,
    evaluate,
    to_device,
    trained_state,
)
from lmstack.train.optim import build_optimizer
from lmstack.train.schedule import lr_at

Sampler = Callable[[torch.nn.Module, Tokenizer], str]  # model, tokenizer -> a sample's text


@dataclass
class TrainResult:
    """What a run ended with."""

    out_dir: Path
    step: int
    train_loss: float
    val: dict = field(default_factory=dict)
    seconds: float = 0.0
    tokens_per_second: float = 0.0


def resolve_tokenizer(cfg: TrainConfig) -> Tokenizer:
    """The tokenizer named in cfg, else the one saved with the shards."""
    path = Path(cfg.tokenizer) if cfg.tokenizer else Path(cfg.data) / "tokenizer.json"
    if not path.exists():
        raise ConfigError(f"no tokenizer at {path}; pass tokenizer=PATH (the one the shards "
                          "were prepared with)")
    return Tokenizer.load(path)


def build(cfg: TrainConfig, tok: Tokenizer) -> torch.nn.Module:
    """The model of cfg.model, with the tokenizer's vocabulary and a context that fits."""
    model_cfg = dict(cfg.model)
    model_cfg.setdefault("vocab_size", tok.vocab_size)
    if model_cfg["vocab_size"] < tok.vocab_size:
        raise ConfigError(f"model.vocab_size {model_cfg['vocab_size']} is smaller than the "
                          f"tokenizer's {tok.vocab_size}; remove it or raise it")
    mc = config_from_dict(model_cfg)
    limit = getattr(mc, "block_size", None)
    if limit is not None and cfg.block_size > limit:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context "
                          f"model.block_size {limit}; lower block_size or raise model.block_size")
    return build_model(mc)


def scheduled_inputs(model, x: torch.Tensor, p: float) -> torch.Tensor:
    """Replace each input token after the first by the model's own sample with probability p."""
    if p <= 0:
        return x
    with torch.no_grad():
        probs = torch.softmax(model(x).float(), dim=-1)
        own = torch.multinomial(probs.reshape(-1, probs.size(-1)), 1).view_as(x)
    swap = torch.rand(x.shape[0], x.shape[1] - 1, device=x.device) < p
    mixed = x.clone()
    mixed[:, 1:] = torch.where(swap, own[:, :-1], x[:, 1:])
    return mixed


def _fit_ngram(model: NGramLM, cfg: TrainConfig, tok, train, val, out: Path,
               d: distributed.Dist) -> TrainResult:
    start = time.perf_counter()
    model.fit(np.asarray(train.tokens))
    metrics = evaluate(model, val, tok, cfg.eval_batches, torch.device("cpu"), cfg, d)
    if d.is_main:  # every rank counts the same tokens; one writes
        ckpt.save_checkpoint(out, model=model, tokenizer=tok, optimizer=None, step=0,
                             data_state={}, config=cfg.to_dict())
        ckpt.append_log(out, {"step": 0, **metrics})
    return TrainResult(out, 0, float("nan"), metrics, time.perf_counter() - start)


def save(out: Path, raw_model, optimizer, tok: Tokenizer, step: int, data_state: dict,
         cfg: TrainConfig, d: distributed.Dist, objective: Objective | None = None) -> None:
    """Checkpoint: every rank joins the gathering (collective), rank 0 writes.

    `raw_model` is the model before DDP/torch.compile wrapping (under FSDP, the sharded module
    itself), so parameter names carry no `module.`/`_orig_mod.` prefixes. A PEFT objective
    keeps only the trained parameters and writes the model as its adapter."""
    objective = objective or Objective()
    optim_state = distributed.full_optimizer_state(raw_model, optimizer)
    if distributed.is_sharded(raw_model):
        # FSDP holds only shards: gather full weights into a plain copy that rank 0 can write.
        weights = distributed.full_model_state(raw_model)
        if d.is_main:
            plain = build_model(raw_model.config)
            plain.load_state_dict(weights)
            raw_model = plain
    rngs = distributed.gather_objects(ckpt.rng_state(), d)
    if d.is_main:
        ckpt.save_checkpoint(out, model=raw_model, tokenizer=tok, optimizer=optim_state,
                             step=step, data_state=data_state, config=cfg.to_dict(), rng=rngs,
                             model_state=trained_state(raw_model) if objective.trainable_only else None,
                             write_model=objective.write_model)


def train(cfg: TrainConfig, sample: Sampler | None = None) -> TrainResult:
    """Run (or resume) the training described by cfg; returns the final metrics.

    `sample(model, tokenizer) -> str` writes the progress samples of `cfg.sample_every`: the
    inference layer's `lmstack.infer.sample_text` (what `lmstack train` passes), which this
    layer may not import. Without it no samples are printed."""
    cfg.check()
    ckpt.check_run_paths(cfg.data, cfg.out_dir, cfg.tokenizer)
    d = distributed.setup(cfg.device)
    try:
        return _train(cfg, d, sample)
    finally:
        distributed.teardown(d)


@dataclass
class Run:
    """What the loop works on: built once by `prepare_run`, then advanced one step at a time."""

    cfg: TrainConfig
    d: distributed.Dist
    out: Path
    tok: Tokenizer
    model: torch.nn.Module  # what trains: wrapped for DDP/FSDP, maybe compiled
    raw_model: torch.nn.Module  # before wrapping: what is evaluated, sampled and saved
    optimizer: torch.optim.Optimizer
    params: list[torch.nn.Parameter]  # listed once: model.parameters() costs ~0.7 ms a step
    scaler: torch.amp.GradScaler | None  # fp16 only
    train_loader: TokenLoader  # or any loader of batches: next_batch, epoch_batches, state_dict
    val_loader: TokenLoader
    objective: Objective = field(default_factory=Objective)  # the batch loss; how to save
    step: int = 0
    metrics: dict = field(default_factory=dict)  # the last validation's
    metrics_step: int = -1
    sample: Sampler | None = None  # writes the progress samples (see `train`)
    saved_step: int | None = None  # the step of the last checkpoint on disk
    last_batch: tuple[torch.Tensor, ...] | None = None  # the last step's last micro-batch


def _train(cfg: TrainConfig, d: distributed.Dist, sample: Sampler | None = None) -> TrainResult:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    autocast(cfg, d.device)  # fail now, not after building everything, on fp16 without CUDA
    # One seed for the initial weights on every rank (FSDP, unlike DDP, does not broadcast
    # them); each rank's own dropout/sampling stream is seeded in prepare_run.
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    out = Path(cfg.out_dir)
    tok = resolve_tokenizer(cfg)
    model = build(cfg, tok)
    train_loader = TokenLoader(cfg.data, "train", cfg.batch_size, cfg.block_size, seed=cfg.seed,
                               rank=d.rank, world_size=d.world_size, tokenizer=tok)
    val_loader = TokenLoader(cfg.data, "val", cfg.batch_size, cfg.block_size, shuffle=False,
                             rank=d.rank, world_size=d.world_size, tokenizer=tok)
    out.mkdir(parents=True, exist_ok=True)  # only now: a run refused above leaves nothing
    if isinstance(model, NGramLM):
        return _fit_ngram(model, cfg, tok, train_loader, val_loader, out, d)
    run = prepare_run(cfg, d, out, tok, model, train_loader, val_loader)
    run.sample = sample
    return run_loop(run)


def prepare_run(cfg: TrainConfig, d: distributed.Dist, out: Path, tok: Tokenizer, model,
             train_loader: TokenLoader, val_loader: TokenLoader,
             objective: Objective | None = None) -> Run:
    """Device, QAT, wrapping, optimizer and, with `resume`, the checkpoint's state."""
    objective = objective or Objective()
    if cfg.qat_bits:  # fake-quantized Linear weights with a straight-through gradient
        from lmstack.train.qat import apply_qat

        apply_qat(model, cfg.qat_bits, cfg.qat_group_size)
    model.to(d.device)
    state = _resume_state(cfg, out, d)
    if state is not None:
        # Full weights (or a PEFT run's trained ones), before any sharding.
        ckpt.load_model_state(model, state, cfg.model, out / ckpt.STATE,
                              partial=objective.trainable_only)
    raw_model = model
    model = distributed.wrap(model, d, cfg.parallel)
    # After wrapping: FSDP replaces the parameters by sharded ones, which the optimizer must hold.
    optimizer = build_optimizer(model, cfg.optim, lr_at(0, cfg.schedule))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    _peak_flops(cfg, d)  # measured now, before training starts; the clock reuses it (cached)
    torch.manual_seed(cfg.seed + d.rank)
    run = Run(cfg, d, out, tok, model, raw_model, optimizer, params,
              torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None,
              train_loader, val_loader, objective)
    if state is not None:
        distributed.load_optimizer_state(raw_model, optimizer, state["optimizer"])
        train_loader.load_state_dict(state["data"])
        ckpt.set_rng_state(ckpt.rng_of_rank(state, d.rank, d.world_size))
        run.step = state["step"]
        if d.is_main:
            ckpt.truncate_log(out, run.step)
    elif d.is_main and (out / ckpt.LOG).exists():
        (out / ckpt.LOG).unlink()  # a fresh run starts a fresh log
    if d.is_main:
        ckpt.remove_stale_temps(out)
    if cfg.compile:
        run.model = torch.compile(model)
    return run


def _resume_state(cfg: TrainConfig, out: Path, d: distributed.Dist) -> dict | None:
    """With `resume`, the checkpoint to continue from; says which: resuming, or starting fresh."""
    if not cfg.resume:
        return None
    if not (out / ckpt.STATE).exists():
        if d.is_main:
            print(f"resume: no checkpoint in {out} (no {ckpt.STATE}); starting fresh at step 0")
        return None
    state = ckpt.load_train_state(out)
    if d.is_main:
        print(f"resuming from step {state['step']} ({out / ckpt.STATE})")
    return state


def run_loop(run: Run) -> TrainResult:
    """Step until cfg.steps (or a deadline, or the target loss); then the final metrics."""
    cfg = run.cfg
    clock = _start_clock(run)
    bar = tqdm(total=cfg.steps, initial=run.step, desc="train", dynamic_ncols=True,
               disable=not (cfg.progress and run.d.is_main))
    loss = float("nan")
    run.model.train()
    run.saved_step = run.step or None  # a resumed run's checkpoint is on disk
    while run.step < cfg.steps:
        lr = lr_at(run.step, cfg.schedule)
        p_own = cfg.scheduled_sampling * run.step / max(1, cfg.steps)
        loss = train_step(run, lr, p_own)
        if not math.isfinite(loss):  # every rank holds the same mean loss: all stop together
            bar.close()
            raise diverged(run, f"the loss is {loss} at step {run.step + 1}", lr)
        run.step += 1
        record = {"step": run.step, "loss": loss, "lr": lr}
        if _after_step(run, clock, bar, record, run.objective.report() if run.objective.report else {}):
            break
    bar.close()
    seconds = time.perf_counter() - clock.start
    if cfg.eval_every and run.metrics_step != run.step:
        run.metrics = _validate(run)
    return TrainResult(run.out, run.step, loss, run.metrics, seconds,
                       clock.tokens_per_second(run.step))


def train_step(run: Run, lr: float, p_own: float) -> float:
    """One optimizer step over `grad_accum` micro-batches; the mean loss per trained target
    over all micro-batches and ranks (objective.py says why not a mean of means)."""
    cfg, d, model, optimizer, scaler = run.cfg, run.d, run.model, run.optimizer, run.scaler
    for group in optimizer.param_groups:
        group["lr"] = lr
    micros = [to_device(run.train_loader.next_batch(), d.device) for _ in range(cfg.grad_accum)]
    # Every rank divides by the global count; DDP's gradient mean over ranks then needs x world.
    count = distributed.all_sum([sum(run.objective.count(b) for b in micros)], d)[0]
    if count == 0:
        raise ConfigError(f"step {run.step + 1} has no trained target in any of its batches "
                          "(every label is -100): the data's loss mask is empty; check the "
                          "data (and the chat template's assistant spans)")
    scale = d.world_size / count
    loss_sum = 0.0
    for micro, batch in enumerate(micros):
        if p_own > 0:
            batch = (scheduled_inputs(model, batch[0], p_own), *batch[1:])
        # Under DDP/FSDP gradients are synchronized on the last micro-batch only.
        with distributed.grad_sync(model, micro == cfg.grad_accum - 1):
            with autocast(cfg, d.device):
                nats, _ = run.objective.loss_fn(model, batch)
                loss = nats * scale
            (scaler.scale(loss) if scaler else loss).backward()
        loss_sum += loss.detach().item()
    run.last_batch = batch  # what a checkpoint's weights are tried on (_checkpoint)
    if scaler:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if cfg.optim.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.params, cfg.optim.grad_clip)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return distributed.all_mean(loss_sum, d)


def _peak_flops(cfg: TrainConfig, d) -> float:
    """The MFU denominator: this device's measured matmul peak in the precision trained in."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.precision]
    return measure_peak_flops(d.device, dtype)


def _start_clock(run: Run) -> Clock:
    """Print the model line; start timing the training (MFU: model FLOPs / measured peak)."""
    cfg, d = run.cfg, run.d
    tokens_per_step = cfg.batch_size * cfg.block_size * cfg.grad_accum * d.world_size
    flops_per_step = flops_per_token(run.raw_model.config, cfg.block_size) * tokens_per_step
    peak = _peak_flops(cfg, d) * d.world_size
    if d.is_main:
        print(f"model: {type(run.raw_model).__name__} {num_params(run.raw_model) / 1e6:.2f}M "
              f"parameters; {tokens_per_step:,} tokens per step; device {d.device} x{d.world_size}")
    return Clock(tokens_per_step, flops_per_step, peak, run.step,
                 cfg.max_minutes * 60 if cfg.max_minutes else None)


def _after_step(run: Run, clock: Clock, bar, record: dict, extra: dict) -> bool:
    """The bookkeeping of one step, in order: speed, validation, sample, log, checkpoint.
    `extra` (the objective's report) joins the record on logged steps. Returns whether to stop
    (out of time, or the target loss reached)."""
    cfg, d, step = run.cfg, run.d, run.step
    now = time.perf_counter()
    if step % cfg.log_every == 0 or step == cfg.steps:
        record.update(clock.reading(step, now))
        record.update(extra)
    # Ranks must agree on stopping: under DDP/FSDP a rank that leaves early hangs the rest.
    out_of_time = clock.deadline_s is not None and distributed.any_rank(now >= clock.deadline_s, d)
    reached = False  # target_val_loss met
    if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
        run.metrics, run.metrics_step = _validate(run), step
        record.update(run.metrics)
        # Every rank holds the same summed metrics, so all agree on stopping.
        reached = cfg.target_val_loss is not None and run.metrics["val_loss"] <= cfg.target_val_loss
        _report_validation(run, reached)
    if cfg.sample_every and step % cfg.sample_every == 0:
        _sample(run)
    if len(record) > 3:
        record["elapsed_s"] = time.perf_counter() - clock.start
    if d.is_main:
        _log(run, bar, record)
    stop = out_of_time or reached
    if step % cfg.save_every == 0 or step == cfg.steps or stop:
        _checkpoint(run, record["lr"])
    clock.pause(now)  # validation, samples and saving are not training
    return stop


def _checkpoint(run: Run, lr: float) -> None:
    """Save, unless the weights went bad: then stop with `diverged`, keeping the last good
    checkpoint on disk. The step's loss was that of the weights before its update, so the
    updated ones are checked here: finite, and a finite loss on the step's last batch."""
    if distributed.any_rank(nonfinite_weight(run.raw_model) is not None, run.d):
        raise diverged(run, f"the weights hold NaN or inf after step {run.step}", lr)
    if distributed.any_rank(not math.isfinite(_loss_now(run)), run.d):
        raise diverged(run, f"the weights after step {run.step} give a non-finite loss", lr)
    save(run.out, run.raw_model, run.optimizer, run.tok, run.step,
         run.train_loader.state_dict(), run.cfg, run.d, run.objective)
    run.saved_step = run.step


@torch.no_grad()
def _loss_now(run: Run) -> float:
    """The loss of the current weights on the last batch (eval mode: no dropout, no RNG draw,
    so a resumed run's random stream is that of an uninterrupted one)."""
    if run.last_batch is None:
        return 0.0
    run.raw_model.eval()
    with autocast(run.cfg, run.d.device):
        nats, count = run.objective.loss_fn(run.raw_model, run.last_batch)
        loss = float(nats) / max(count, 1)
    run.raw_model.train()
    distributed.reshard(run.raw_model)
    return loss


def diverged(run: Run, what: str, lr: float) -> ConfigError:
    """The error that stops a run whose loss or weights left the finite numbers."""
    cfg = run.cfg
    kept = (f"the last checkpoint, step {run.saved_step}, is kept in {run.out}"
            if run.saved_step else f"nothing was saved (save_every={cfg.save_every})")
    clip = (f"lower optim.grad_clip (now {cfg.optim.grad_clip})" if cfg.optim.grad_clip > 0
            else "enable gradient clipping (optim.grad_clip=1.0)")
    return ConfigError(f"training diverged: {what} (learning rate {lr:.3g}); {kept}. Lower the "
                       f"learning rate (e.g. schedule.lr={cfg.schedule.lr / 10:.3g}) or {clip}, "
                       "then train again")


def _validate(run: Run) -> dict:
    if run.objective.evaluate is not None:
        metrics = run.objective.evaluate(run)
        distributed.reshard(run.raw_model)
        return metrics
    metrics = evaluate(run.raw_model, run.val_loader, run.tok, run.cfg.eval_batches, run.d.device,
                       run.cfg, run.d, run.objective.loss_fn)
    distributed.reshard(run.raw_model)
    return metrics


def _report_validation(run: Run, reached: bool) -> None:
    if run.d.is_main:
        tqdm.write(f"step {run.step}: {validation_line(run.metrics)}"
                   + (f" <= target {run.cfg.target_val_loss}: stopping" if reached else ""))


def validation_line(metrics: dict) -> str:
    """A validation's numbers on one line: the language-model ones by their names, others as
    `name value`.

    >>> validation_line({"val_loss": 2.0, "val_ppl": 7.389, "val_bpb": 1.5})
    'val loss 2.0000, ppl 7.39, 1.500 bits/byte'
    >>> validation_line({"val_loss": 0.5, "val_accuracy": 0.75, "val_pairs": 40})
    'val loss 0.5000, val_accuracy 0.75, val_pairs 40'
    """
    named = {"val_loss": "val loss {:.4f}", "val_ppl": "ppl {:.2f}", "val_bpb": "{:.3f} bits/byte"}
    return ", ".join(named[k].format(v) if k in named
                     else f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in metrics.items())


def _sample(run: Run) -> None:
    """Print a sample. From rank 0 alone, except under FSDP, where every forward pass is a
    collective every rank must join."""
    raw_model, tok, d = run.raw_model, run.tok, run.d
    if run.sample is None or not (d.is_main or distributed.is_sharded(raw_model)):
        return
    text = run.sample(raw_model, tok)
    distributed.reshard(raw_model)
    if d.is_main:
        tqdm.write(f"--- sample at step {run.step} ---\n{text}\n---")


def _log(run: Run, bar, record: dict) -> None:
    """Append the record to log.jsonl (every log_every steps, or when it holds more than the
    loss) and move the progress bar."""
    # Logged before saving: a kill between the two then repeats this record on resume
    # (truncate_log drops it) instead of losing it.
    if len(record) > 3 or run.step % run.cfg.log_every == 0:
        ckpt.append_log(run.out, record)
    if "mfu" in record:
        bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_s']:,.0f}",
                        mfu=f"{record['mfu']:.1%}", refresh=False)
    bar.update(1)

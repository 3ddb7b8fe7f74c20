"""`lmstack sft`: supervised fine-tuning of an existing model on chat JSONL, fully or with PEFT.

    lmstack sft --model smollm2 --data chats.jsonl --out runs/sft [--config sft.toml]
                [--set peft.method=lora peft.r=16 steps=300 precision=bf16] [--resume]

The pipeline, each part in its own file:

1. the base (`base_model`): any model directory, HF directory, GGUF file or installed name,
   its quantized matrices (a GGUF file's Q4_1) turned back into the floats they stand for, its
   tokenizer and its chat template (lmstack/models/directory.py);
2. the data (sft_data.py): every JSONL line rendered with that template, the loss on the
   assistant's tokens only, cut to `block_size` (the report says how many were cut), a seeded
   `val_fraction` held out (or `val_data`), packed into rows (`pack`) that sft.py's SFTLoader
   deals and sft.py's `sft_loss` scores with block-diagonal attention;
3. the method (`peft.method`, the METHODS registry below): all weights train (`full`), or a
   parameter-efficient method's few on a frozen base (lmstack/posttrain/peft/);
4. the trainer's own loop (lmstack/train/loop.py): AMP, DDP/FSDP, gradient accumulation,
   clipping, the schedule, validation loss and bits per byte on the held-out rows, a greedy
   answer to held-out prompts every `sample_every` steps, atomic checkpoints and exact `--resume`.

OUT is a model directory (`full`: config.json, model.safetensors, tokenizer and chat template)
or an adapter directory (PEFT: adapter_config.json + adapter_model.safetensors, used as
`lmstack chat --model BASE --lora OUT`), plus train_state.pt, train_config.json and log.jsonl.
A PEFT checkpoint holds the trained parameters alone, not a copy of the base.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lmstack.atomic import atomic_write_json
from lmstack.errors import ConfigError
from lmstack.models.directory import (
    load_model,
    load_tokenizer,
    model_chat_template,
    model_eos_ids,
    resolve_model,
    save_companions,
    save_model,
)
from lmstack.posttrain.sft import SFTLoader, sft_loss
from lmstack.posttrain.sft_config import SFTConfig
from lmstack.posttrain.sft_data import (
    Example,
    PackedRow,
    TruncationReport,
    load_sft_examples,
    pack,
    truncate,
)
from lmstack.tokenizer import Tokenizer
from lmstack.tokenizer.chat_template import ChatTemplate
from lmstack.train import distributed
from lmstack.train.loop import TrainResult, prepare_run, run_loop
from lmstack.train.objective import Objective


@dataclass
class SFTData:
    """The rows a run trains and validates on, and what truncation did to the examples."""

    train: list[PackedRow]
    val: list[PackedRow]
    prompts: list[list[int]]  # held-out prompts (ids up to the first trained token), for samples
    report: TruncationReport
    examples: int  # training examples after truncation
    row_len: int  # tokens per row


def row_length(cfg: SFTConfig) -> tuple[int, bool]:
    """(tokens per row, packed): prompt tuning puts its virtual tokens before every example,
    so its rows hold one example of at most block_size - virtual_tokens tokens."""
    if cfg.peft.method == "prompt":
        room = cfg.block_size - cfg.peft.virtual_tokens
        if room < 2:
            raise ConfigError(f"block_size {cfg.block_size} leaves no room beside "
                              f"{cfg.peft.virtual_tokens} virtual tokens; raise block_size or lower "
                              "peft.virtual_tokens")
        return room, False
    return cfg.block_size, cfg.pack


def load_base(cfg: SFTConfig) -> tuple[torch.nn.Module, Tokenizer]:
    """The base model in float weights, and its tokenizer."""
    from lmstack.infer.quantize import dequantize_model

    tok = load_tokenizer(cfg.base_model)
    if tok is None:
        raise ConfigError(f"model {cfg.base_model} has no tokenizer (tokenizer.json); fine-tuning "
                          "renders text, so give a model directory that has one")
    model = dequantize_model(load_model(cfg.base_model))  # Q4_1/int8 matrices: their floats
    cfg.model = model.config.to_dict()  # the architecture, for train_config.json and resume
    return model, tok


def _rows(examples: list[Example], max_len: int, packed: bool) -> list[PackedRow]:
    """Packed rows (first fit), or one example per row."""
    return pack(examples, max_len) if packed else [r for e in examples for r in pack([e], max_len)]


def hold_out(items: list, cfg: SFTConfig) -> tuple[list, list]:
    """(training, held-out) items, each in file order: a seeded `val_fraction` held out (at
    least one when it is above 0), none when validation is off (eval_every=0)."""
    order = list(range(len(items)))
    random.Random(cfg.seed).shuffle(order)
    n_val = round(cfg.val_fraction * len(items)) if cfg.eval_every else 0
    n_val = max(n_val, 1) if cfg.val_fraction > 0 and cfg.eval_every else n_val
    return [items[i] for i in sorted(order[n_val:])], [items[i] for i in sorted(order[:n_val])]


def load_data(cfg: SFTConfig, tok: Tokenizer) -> SFTData:
    """Render, tokenize, hold out, truncate and pack `cfg.data` (errors name file and line)."""
    template = model_chat_template(cfg.base_model)
    examples = load_sft_examples(cfg.data, tok, template, cfg.train_on_prompt)
    if cfg.val_data is not None:
        held = load_sft_examples(cfg.val_data, tok, template, cfg.train_on_prompt)
    else:
        examples, held = hold_out(examples, cfg)
    length, packed = row_length(cfg)
    train, report = truncate(examples, length)
    val, _ = truncate(held, length)
    if not train:
        raise ConfigError(f"{cfg.data}: no training example is left ({report}); add examples, "
                          "lower val_fraction or raise block_size")
    return SFTData(_rows(train, length, packed), _rows(val, length, packed),
                   [e.prompt_ids() for e in held[:cfg.max_samples]], report, len(train), length)


# ---- the methods ------------------------------------------------------------------------

Method = Callable[[torch.nn.Module, SFTConfig, Tokenizer], tuple[torch.nn.Module, Objective]]


def _full(model: torch.nn.Module, cfg: SFTConfig, tok: Tokenizer) -> tuple[torch.nn.Module, Objective]:
    """Every weight trains; OUT is a whole model directory with the base's companions."""
    model.requires_grad_(True)

    def write(out: Path, m: torch.nn.Module) -> None:
        save_model(out, m)
        save_companions(cfg.base_model, out, tok)
    return model, Objective(sft_loss, trainable_only=False, write_model=write)


def _peft(make: Callable[[SFTConfig], tuple]) -> Method:
    """A PEFT method (lmstack/posttrain/peft/): `make(cfg)` gives apply_peft's (config, quant);
    the base freezes, OUT is the adapter directory, checkpoints hold the adapter alone."""
    def method(model: torch.nn.Module, cfg: SFTConfig, tok: Tokenizer) -> tuple[torch.nn.Module, Objective]:
        from lmstack.posttrain.peft import apply_peft, save_peft

        config, quant = make(cfg)
        model = apply_peft(model, config, quant)  # prompt tuning wraps: a new module
        base = str(resolve_model(cfg.base_model))
        return model, Objective(sft_loss, trainable_only=True,
                                write_model=lambda out, m: save_peft(m, out, base))
    return method


def _lora_config(cfg: SFTConfig):
    from lmstack.posttrain.peft import LoraConfig

    p = cfg.peft
    return LoraConfig(p.r, p.alpha, p.dropout, tuple(p.target_modules), p.use_rslora)


def _qlora(cfg: SFTConfig) -> tuple:
    from lmstack.posttrain.peft import QuantConfig

    return _lora_config(cfg), QuantConfig(method=cfg.peft.quant, group_size=cfg.peft.group_size)


def _prompt(cfg: SFTConfig) -> tuple:
    from lmstack.posttrain.peft import PromptTuningConfig

    return PromptTuningConfig(num_virtual_tokens=cfg.peft.virtual_tokens, seed=cfg.seed), None


def _adapters(cfg: SFTConfig) -> tuple:
    from lmstack.posttrain.peft import HoulsbyConfig

    return HoulsbyConfig(bottleneck=cfg.peft.bottleneck), None


# peft.method -> (model, config, tokenizer) -> (the model to train, the run's Objective)
METHODS: dict[str, Method] = {
    "full": _full,
    "lora": _peft(lambda cfg: (_lora_config(cfg), None)),  # Hu et al. 2021
    "qlora": _peft(_qlora),        # Dettmers et al. 2023: LoRA over a frozen 4-bit base
    "prompt": _peft(_prompt),      # Lester et al. 2021: a trainable soft prompt
    "adapters": _peft(_adapters),  # Houlsby et al. 2019: bottleneck modules
}


# ---- the run ----------------------------------------------------------------------------

SUMMARY = "sft_summary.json"


def check_paths(cfg: SFTConfig) -> None:
    """Refuse an output directory that would overwrite the base model or the data."""
    out = Path(cfg.out_dir).resolve()
    base = Path(cfg.base_model)
    if base.exists() and out == base.resolve():
        raise ConfigError(f"out_dir {cfg.out_dir} is the base model's directory; fine-tuning "
                          "would overwrite it. Give another --out")
    if out in (Path(cfg.data).resolve(), Path(cfg.val_data or cfg.data).resolve()):
        raise ConfigError(f"out_dir {cfg.out_dir} is the data file; give another --out")


def answer_settings(template: ChatTemplate, tok: Tokenizer, max_new_tokens: int) -> dict:
    """Greedy decoding that ends at the template's end of turn (a special token, or its text)."""
    marker = template.end_marker()
    return {"temperature": 0.0, "max_new_tokens": max_new_tokens,
            "stop_token_ids": template.stop_tokens(tok),
            "stop": [marker] if marker and marker not in tok.special_tokens else []}


def sampler(prompts: list[list[int]], template: ChatTemplate, eos_ids: list[int] | None,
            max_new_tokens: int = 48):
    """The loop's `sample(model, tok)`: greedy answers to held-out prompts, one per line."""
    from lmstack.infer import Engine

    def sample(model: torch.nn.Module, tok: Tokenizer) -> str:
        was_training = model.training
        try:
            engine = Engine(model, tok, eos_ids=eos_ids)
            settings = answer_settings(template, tok, max_new_tokens)
            return "\n".join(repr(engine.generate(p, **settings).text) for p in prompts)
        finally:
            model.train(was_training)
    return sample


def sft(cfg: SFTConfig) -> TrainResult:
    """Run (or resume) the fine-tuning cfg describes; returns the final metrics."""
    return posttrain_run(cfg, _sft)


RunBody = Callable[[SFTConfig, distributed.Dist, torch.nn.Module, Tokenizer], TrainResult]


def posttrain_run(cfg: SFTConfig, body: RunBody) -> TrainResult:
    """The frame of a post-training run: the config and paths checked, the process group up
    (and down after), threads and seed set, the base loaded and held to its context; then
    `body(cfg, d, base, tokenizer)` (sft, reward, dpo)."""
    cfg.check()
    check_paths(cfg)
    d = distributed.setup(cfg.device)
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        model, tok = load_base(cfg)
        check_context(model, cfg)
        return body(cfg, d, model, tok)
    finally:
        distributed.teardown(d)


def check_context(model: torch.nn.Module, cfg: SFTConfig) -> None:
    """ConfigError when block_size is longer than the model's context."""
    context = getattr(model.config, "block_size", None)
    if context is not None and cfg.block_size > context:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the model's context of {context} "
                          f"tokens; set block_size={context} or lower")


def apply_method(model: torch.nn.Module, cfg: SFTConfig, tok: Tokenizer
                 ) -> tuple[torch.nn.Module, Objective]:
    """cfg's peft.method on the model: the model to train and its Objective (sft_loss; the
    other post-training runs replace the loss and keep how checkpoints hold the model)."""
    if cfg.peft.method not in METHODS:
        raise ConfigError(f"peft.method={cfg.peft.method} is not available yet; use one of "
                          f"{', '.join(METHODS)}")
    return METHODS[cfg.peft.method](model, cfg, tok)


def write_summary(cfg: SFTConfig, model: torch.nn.Module, d: distributed.Dist, **data) -> None:
    """Print and write (OUT/sft_summary.json) which parameters train and what data they see."""
    from lmstack.posttrain.peft import trainable_summary, weight_bytes

    counts = trainable_summary(model)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if d.is_main:  # what the run trains, for people and the benchmarks
        print(f"method: {cfg.peft.method}, {counts.trainable:,} of {counts.total:,} parameters train")
        atomic_write_json(out / SUMMARY, {
            "method": cfg.peft.method, "trainable": counts.trainable, "total": counts.total,
            "weight_bytes": weight_bytes(model)["total"], **data})


def next_step(cfg: SFTConfig, result: TrainResult) -> str:
    """How to use what a run wrote: the model directory, or the base with the adapter."""
    use = ("--model " + result.out_dir.as_posix() if cfg.peft.method == "full"
           else f"--model {cfg.base_model} --lora {result.out_dir.as_posix()}")
    return f"try it: lmstack chat {use}"


def make_loaders(cfg: SFTConfig, d: distributed.Dist, train: list, val: list, max_len: int,
                 kind: type[SFTLoader] = SFTLoader) -> tuple[SFTLoader, SFTLoader | None]:
    """The training loader and the held-out one of `kind`; with nothing held out, none, and
    validation is switched off (eval_every=0)."""
    # Padding is never attended to nor trained (segment 0, label -100): any id pads.
    train_loader = kind(train, cfg.batch_size, max_len, 0, cfg.seed, d.rank, d.world_size)
    if not (val and cfg.eval_every):
        cfg.eval_every = 0
        return train_loader, None
    per_rank = max(1, min(cfg.batch_size, len(val) // d.world_size))
    return train_loader, kind(val, per_rank, max_len, 0, cfg.seed, d.rank, d.world_size)


def _sft(cfg: SFTConfig, d: distributed.Dist, model: torch.nn.Module, tok: Tokenizer) -> TrainResult:
    data = load_data(cfg, tok)
    model, objective = apply_method(model, cfg, tok)  # before any write: bad targets fail here
    train, val = make_loaders(cfg, d, data.train, data.val, data.row_len)
    if d.is_main:
        print(f"data: {data.examples} training examples in {len(data.train)} rows of "
              f"{data.row_len}, {len(data.val)} held-out rows; {data.report}")
    write_summary(cfg, model, d, examples=data.examples, rows=len(data.train),
                  val_rows=len(data.val), cut=data.report.cut, dropped=data.report.dropped)
    run = prepare_run(cfg, d, Path(cfg.out_dir), tok, model, train, val, objective)
    run.sample = sampler(data.prompts, model_chat_template(cfg.base_model), model_eos_ids(cfg.base_model))
    return run_loop(run)

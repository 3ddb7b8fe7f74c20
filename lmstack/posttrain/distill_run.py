"""`lmstack distill`: a student learns from a teacher, by its text, its logits, or on-policy.

    lmstack distill --mode data --teacher runs/big --model runs/small --data prompts.jsonl --out runs/d
    lmstack distill --mode kd   --teacher runs/big --model runs/small --data chats.jsonl --out runs/kd
    lmstack distill --mode gkd  --teacher runs/big --model runs/small --data chats.jsonl --out runs/gkd
                    [--config distill.toml] [--set distill.lmbda=1 distill.divergence=jsd] [--resume]

The modes (MODES below), all on the SFT run's pieces (sft_run.py: the student, `[peft]`, the
data, the loaders, checkpoints and `--resume`, the trainer's loop):

- `data` (Kim & Rush 2016, sequence-level KD): the teacher answers the prompts of `--data`
  (distill_data.py: OUT/distill_data.jsonl, resumable), then the student is fine-tuned on those
  answers by the SFT run itself. The only mode that works across tokenizers.
- `kd` (Hinton et al. 2015): on the data's own answers, the student's next-token distribution
  is pulled to the frozen teacher's at every answer token (distill_loss.py: forward or reverse
  KL or JSD(β), temperature T, times T²). `distill.alpha` mixes in the cross-entropy on the
  labels: loss = (1 - α)·divergence + α·CE, both summed over the same tokens.
- `gkd` (Agarwal et al. 2024, "On-Policy Distillation of Language Models"): each batch is,
  with probability `lmbda`, the student's own answers to the batch's prompts (sampled at
  `student_temperature`, gkd.py), else the data's; the teacher scores every token either way,
  and the loss is the generalized JSD(β) by default. Learning on its own samples is what lets
  the student fix the mistakes it actually makes (train/inference mismatch).

Logit modes need one tokenizer (distill_loss.check_same_vocab says where two differ). Two
embeddings padded to different sizes over that one tokenizer are compared over the tokenizer's
ids. Validation reports `val_loss`, the divergence per held-out answer token (what
target_val_loss stops on), and the student's own `val_lm_loss`/`val_ppl`/`val_bpb` there;
the log adds each step's `divergence` and `student_ce` per token (gkd: `on_policy`, the share
of on-policy batches).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
import torch.distributed

from lmstack.errors import ConfigError, DataError
from lmstack.models import num_params
from lmstack.models.directory import (
    load_model,
    load_tokenizer,
    model_chat_template,
    model_eos_ids,
    resolve_model,
)
from lmstack.models.protocol import next_token_loss
from lmstack.posttrain.distill_config import DistillConfig
from lmstack.posttrain.distill_data import (
    DATA_FILE,
    file_digest,
    model_stamp,
    read_prompts,
    write_answers,
)
from lmstack.posttrain.distill_loss import (
    KDConfig,
    batch_logits,
    check_same_vocab,
    distill_loss,
)
from lmstack.posttrain.sft_config import SFTConfig
from lmstack.posttrain.sft_run import (
    SFTData,
    answer_settings,
    apply_method,
    load_data,
    make_loaders,
    posttrain_run,
    sampler,
    sft,
    write_summary,
)
from lmstack.tokenizer import Tokenizer
from lmstack.train import distributed
from lmstack.train.loop import TrainResult, prepare_run, run_loop
from lmstack.train.objective import Batch, evaluate


def distill(cfg: DistillConfig) -> TrainResult:
    """Run (or resume) the distillation cfg describes; returns the final metrics."""
    cfg.check()
    check_exists(cfg.teacher, "--teacher (the teacher)")
    check_exists(cfg.base_model, "--model (the student)")
    if Path(cfg.out_dir).resolve() == resolve_model(cfg.teacher).resolve():
        raise ConfigError(f"out_dir {cfg.out_dir} is the teacher's directory; training would "
                          "overwrite it. Give another --out")
    return posttrain_run(cfg, MODES[cfg.mode])


def check_exists(model: str, what: str) -> None:
    """ConfigError unless `model` names a model that is there (a path, or an installed name)."""
    if not resolve_model(model).exists():
        raise ConfigError(f"{what} {model} does not exist; pass a model directory, HF "
                          "directory, GGUF file or installed name")


def load_teacher(cfg: DistillConfig, device: torch.device) -> tuple[torch.nn.Module, Tokenizer]:
    """The teacher in float weights on `device`, frozen and in eval mode, and its tokenizer."""
    from lmstack.infer.quantize import dequantize_model

    tok = load_tokenizer(cfg.teacher)
    if tok is None:
        raise ConfigError(f"the teacher {cfg.teacher} has no tokenizer (tokenizer.json); "
                          "distillation reads text with it, so give a model directory that has one")
    teacher = dequantize_model(load_model(cfg.teacher)).to(device).eval()
    return teacher.requires_grad_(False), tok


def warn_if_bigger(student: torch.nn.Module, teacher: torch.nn.Module, d: distributed.Dist) -> None:
    """A warning (not an error) when the student has more parameters than its teacher."""
    ns, nt = num_params(student), num_params(teacher)
    if ns > nt and d.is_main:
        print(f"warning: the student ({ns / 1e6:.2f}M parameters) is bigger than the teacher "
              f"({nt / 1e6:.2f}M); distillation usually trains a smaller model. Check --model "
              "and --teacher", file=sys.stderr)


def logit_width(teacher: torch.nn.Module, teacher_tok: Tokenizer, student: torch.nn.Module,
                tok: Tokenizer, cfg: DistillConfig, d: distributed.Dist) -> int | None:
    """How many logits to compare: None (all) when both embeddings have one size; the
    tokenizer's ids when one is padded. Errors: another tokenizer, a context too short."""
    check_same_vocab(teacher_tok, tok)
    context = getattr(teacher.config, "block_size", None)
    if context is not None and cfg.block_size > context:
        raise ConfigError(f"block_size {cfg.block_size} exceeds the teacher's context of "
                          f"{context} tokens; set block_size={context} or lower")
    vt, vs = teacher.config.vocab_size, student.config.vocab_size
    if vt == vs:
        return None
    if tok.vocab_size > min(vt, vs):
        raise ConfigError(f"the tokenizer has {tok.vocab_size} ids but the "
                          f"{'teacher' if vt < vs else 'student'}'s embedding only {min(vt, vs)}; "
                          "that model does not fit its tokenizer")
    if d.is_main:  # padded rows are ids no text encodes to: both compared over the real ones
        print(f"vocabulary: the teacher's embedding has {vt} rows, the student's {vs}; the "
              f"distributions are compared over the tokenizer's {tok.vocab_size} ids")
    return tok.vocab_size


# ---- the loss: divergence to the teacher, optionally mixed with cross-entropy ------------

@dataclass
class Tally:
    """What the training loss saw since the last report: summed divergence, CE, tokens."""

    divergence: float = 0.0
    ce: float = 0.0
    tokens: int = 0


class DistillLoss:
    """The Objective's loss_fn(student, batch) -> (summed loss, tokens), and its report()."""

    def __init__(self, teacher: torch.nn.Module, kd: KDConfig, alpha: float = 0.0,
                 width: int | None = None) -> None:
        self.teacher, self.kd, self.alpha, self.width = teacher, kd, alpha, width
        self.tally = Tally()

    def logits(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """(B, T, V) logits over the compared ids (an embedding's padded rows cut off)."""
        logits = batch_logits(model, batch)  # (B, T, V_model)
        return logits if self.width is None else logits[..., :self.width]

    def terms(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(summed T²·divergence, summed cross-entropy on the labels, trained tokens)."""
        with torch.no_grad():  # the teacher is a fixed target
            teacher_logits = self.logits(self.teacher, batch)  # (B, T, V)
        student_logits = self.logits(model, batch)  # (B, T, V)
        k = self.kd
        div, n = distill_loss(student_logits, teacher_logits, batch[1], k.divergence,
                              k.temperature, k.beta)
        return div, next_token_loss(student_logits, batch[1], reduction="sum"), n

    def __call__(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        div, ce, n = self.terms(model, batch)
        # Only training steps are tallied: validation and the loop's checkpoint probe run
        # without gradients and must not leak into the next step's report.
        if torch.is_grad_enabled():
            self.tally.divergence += float(div.detach())
            self.tally.ce += float(ce.detach())
            self.tally.tokens += n
        return (1 - self.alpha) * div + self.alpha * ce if self.alpha else div, n

    def divergence(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """loss_fn of the divergence alone (validation's val_loss)."""
        div, _, n = self.terms(model, batch)
        return div, n

    def student_ce(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """loss_fn of the student's cross-entropy on the labels alone (its own LM loss)."""
        return next_token_loss(self.logits(model, batch), batch[1], reduction="sum"), \
            int((batch[1] != -100).sum())

    def report(self) -> dict:
        """Per token since the last call (this rank's): divergence and the student's CE."""
        t, self.tally = self.tally, Tally()
        if not t.tokens:
            return {}
        return {"divergence": t.divergence / t.tokens, "student_ce": t.ce / t.tokens}


def distill_evaluate(loss: DistillLoss) -> Callable[[object], dict]:
    """Objective.evaluate: the divergence per held-out answer token (val_loss) and the
    student's own loss, perplexity and bits per byte on the same tokens."""
    def evaluate_run(run) -> dict:
        args = (run.raw_model, run.val_loader, run.tok, run.cfg.eval_batches, run.d.device,
                run.cfg, run.d)
        div = evaluate(*args, loss_fn=loss.divergence)
        lm = evaluate(*args, loss_fn=loss.student_ce)
        return {"val_loss": div["val_loss"], "val_lm_loss": lm["val_loss"],
                "val_ppl": lm["val_ppl"], "val_bpb": lm["val_bpb"]}
    return evaluate_run


# ---- the modes ---------------------------------------------------------------------------

def load_answers(cfg: DistillConfig, tok: Tokenizer) -> SFTData:
    """The SFT data of a logit mode; prompts without answers get a hint to the data mode."""
    try:
        return load_data(cfg, tok)
    except DataError as e:
        raise DataError(f"{e} (mode {cfg.mode} trains on the data's answers; for prompts "
                        "alone use --mode data, where the teacher writes them)") from None


def _logits_mode(cfg: DistillConfig, d: distributed.Dist, student: torch.nn.Module,
                 tok: Tokenizer) -> TrainResult:
    """kd and gkd: the student, the frozen teacher, the SFT data, the divergence as the loss."""
    teacher, teacher_tok = load_teacher(cfg, d.device)
    width = logit_width(teacher, teacher_tok, student, tok, cfg, d)
    warn_if_bigger(student, teacher, d)
    data = load_answers(cfg, tok)
    model, objective = apply_method(student, cfg, tok)
    s = cfg.distill
    loss = DistillLoss(teacher, KDConfig(cfg.divergence_name(), s.temperature, s.beta), s.alpha, width)
    train, val = make_loaders(cfg, d, data.train, data.val, data.row_len)
    report = loss.report
    if cfg.mode == "gkd":
        from lmstack.posttrain.gkd import OnPolicyLoader

        train = OnPolicyLoader(train, tok, model_chat_template(cfg.base_model),
                               model_eos_ids(cfg.base_model), s, cfg.seed, d.rank,
                               getattr(teacher.config, "block_size", None))
        report = lambda: {**loss.report(), **train.report()}
    objective = replace(objective, loss_fn=loss, report=report, evaluate=distill_evaluate(loss))
    if d.is_main:
        print(f"distill: mode {cfg.mode}, {cfg.divergence_name()} at T={s.temperature}; "
              f"{data.examples} training examples in {len(data.train)} rows of {data.row_len}, "
              f"{len(data.val)} held-out rows; {data.report}")
    write_summary(cfg, model, d, mode=cfg.mode, teacher=str(cfg.teacher),
                  divergence=cfg.divergence_name(), examples=data.examples, rows=len(data.train),
                  val_rows=len(data.val), cut=data.report.cut, dropped=data.report.dropped)
    run = prepare_run(cfg, d, Path(cfg.out_dir), tok, model, train, val, objective)
    if cfg.mode == "gkd":
        train.policy = run.raw_model  # the student samples as it is now, unwrapped
    run.sample = sampler(data.prompts, model_chat_template(cfg.base_model), model_eos_ids(cfg.base_model))
    return run_loop(run)


def teacher_data(cfg: DistillConfig, teacher: torch.nn.Module, tok: Tokenizer) -> Path:
    """OUT/distill_data.jsonl: the teacher's answers to cfg.data's prompts (made or reused)."""
    from lmstack.infer import Engine

    template = model_chat_template(cfg.teacher)
    prompts = read_prompts(cfg.data, tok, template, getattr(teacher.config, "block_size", None))
    s = cfg.distill
    settings = {**answer_settings(template, tok, s.max_new_tokens), "temperature": s.teacher_temperature}
    if s.samples_per_prompt > 1:
        settings.update(num_return_sequences=s.samples_per_prompt, best_of=s.samples_per_prompt)
    teacher_path = resolve_model(cfg.teacher).resolve()
    key = json.loads(json.dumps({"teacher": str(teacher_path), "weights": model_stamp(teacher_path),
                                 "data": file_digest(cfg.data), "settings": settings,
                                 "seed": cfg.seed, "chunk": s.generate_batch}))
    out = Path(cfg.out_dir) / DATA_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    engine = Engine(teacher, tok, eos_ids=model_eos_ids(cfg.teacher))
    progress = write_answers(engine, prompts, out, settings, key, s.generate_batch, cfg.seed)
    print(f"distill: the teacher answered {progress.done} prompts: {progress.lines} answers in "
          f"{out.as_posix()}, {progress.truncated} cut by max_new_tokens={s.max_new_tokens} "
          "left out")
    if not progress.lines:
        raise ConfigError(f"every teacher answer was cut by distill.max_new_tokens="
                          f"{s.max_new_tokens}; raise it so that answers end")
    return out


def _data_mode(cfg: DistillConfig, d: distributed.Dist, student: torch.nn.Module,
               tok: Tokenizer) -> TrainResult:
    """data: rank 0 has the teacher write the training set; then the SFT run trains on it."""
    if d.is_main:
        teacher, teacher_tok = load_teacher(cfg, d.device)
        warn_if_bigger(student, teacher, d)
        teacher_data(cfg, teacher, teacher_tok)
        del teacher
    del student  # the SFT run loads its own
    if d.world_size > 1:
        torch.distributed.barrier()  # the other ranks read the file rank 0 wrote
    keep = {f.name for f in fields(SFTConfig) if f.init}
    sft_cfg = SFTConfig(**{k: v for k, v in vars(cfg).items() if k in keep})
    sft_cfg.data = str(Path(cfg.out_dir) / DATA_FILE)
    return sft(sft_cfg)


Mode = Callable[[DistillConfig, distributed.Dist, torch.nn.Module, Tokenizer], TrainResult]
MODES: dict[str, Mode] = {
    "data": _data_mode,   # Kim & Rush 2016: the teacher's text
    "kd": _logits_mode,   # Hinton et al. 2015: the teacher's logits on the data's answers
    "gkd": _logits_mode,  # Agarwal et al. 2024: also on the student's own samples
}

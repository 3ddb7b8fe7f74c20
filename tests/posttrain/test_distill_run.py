"""`lmstack distill` end to end on tiny GPTs: a teacher trained a few SFT steps on additions and a
smaller random student. KD pulls the student's distribution toward the teacher's (the held-out
divergence falls) and at alpha=1 is the SFT run itself; data mode writes the teacher's greedy
answers (resumably) and trains a student with another tokenizer on them; GKD at lmbda=0 is KD,
at lmbda=1 every batch is the student's own samples; resume is exact; a teacher with another
tokenizer, a missing teacher and answer-less data for kd are refused before anything is
written; a padded embedding and a student bigger than its teacher are handled with a note."""

from __future__ import annotations

import json
import random

import pytest
import torch

from lmstack.cli import main
from lmstack.infer import Engine
from lmstack.models import GPT, GPTConfig
from lmstack.models.directory import (
    load_model,
    model_chat_template,
    model_eos_ids,
    save_model,
)
from lmstack.posttrain.distill_data import Progress, Prompt, write_answers
from lmstack.posttrain.sft_run import answer_settings
from lmstack.tokenizer import Tokenizer, train_bpe
from lmstack.train.checkpoint import STATE, read_log

torch.set_num_threads(2)


def chat(a: int, b: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{a} plus {b}?"},
                         {"role": "assistant", "content": str(a + b)}]}


def tiny(vocab: int, layers: int, width: int, heads: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab, block_size=64, n_layer=layers, n_head=heads,
                         n_kv_head=heads // 2 or 1, n_embd=width, position="rope",
                         norm="rmsnorm", mlp="swiglu", bias=False, dropout=0.0))


def write_model(directory, model, tok: Tokenizer):
    save_model(directory, model)
    tok.save(directory / "tokenizer.json")
    return directory


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tok):
    """A teacher (2 layers, 64 wide, 20 SFT steps on 120 additions), a random student (1 layer,
    32 wide, same tokenizer), the chats and a prompts-only file."""
    root = tmp_path_factory.mktemp("distill")
    rng = random.Random(0)
    (root / "chats.jsonl").write_text("".join(
        json.dumps(chat(rng.randint(0, 99), rng.randint(0, 99))) + "\n" for _ in range(120)))
    torch.manual_seed(0)
    write_model(root / "teacher0", tiny(tok.vocab_size, 2, 64, 4), tok)
    assert main(["sft", "--model", str(root / "teacher0"), "--data", str(root / "chats.jsonl"),
                 "--out", str(root / "teacher"), "--set", "steps=20", "batch_size=8",
                 "block_size=64", "eval_every=0", "progress=false", "schedule.lr=3e-3",
                 "schedule.warmup_steps=0", "threads=2"]) == 0
    torch.manual_seed(1)
    write_model(root / "student", tiny(tok.vocab_size, 1, 32, 2), tok)
    prompts = [{"prompt": f"{a} plus {b}?"} for a, b in [(1, 2), (30, 4), (7, 70), (55, 5)]]
    prompts += [{"prompt": "9 plus 9?", "completion": "a wrong answer the teacher replaces"},
                {"messages": [{"role": "user", "content": "12 plus 3?"}]},
                chat(40, 2)]  # its answer is replaced too
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    return root


def distill(toy, out, mode: str, *settings: str, teacher=None, student=None, data="chats.jsonl") -> int:
    return main(["distill", "--mode", mode, "--teacher", str(teacher or toy / "teacher"),
                 "--model", str(student or toy / "student"), "--data", str(toy / data),
                 "--out", str(out), "--set", "batch_size=4", "block_size=64", "eval_every=4",
                 "eval_batches=3", "progress=false", "schedule.warmup_steps=0", "threads=2",
                 "schedule.lr=3e-3", *settings])


def logged(out, key: str) -> list[float]:
    return [r[key] for r in read_log(out) if key in r]


# ---- kd ----------------------------------------------------------------------------------

def test_kd_pulls_the_student_toward_the_teacher(toy, tmp_path):
    out, start = tmp_path / "kd", tmp_path / "start"
    # the divergence at the start: one step at a vanishing learning rate
    assert distill(toy, start, "kd", "steps=1", "schedule.lr=1e-12", "schedule.min_lr=0") == 0
    assert distill(toy, out, "kd", "steps=12") == 0
    before, div = logged(start, "val_loss")[-1], logged(out, "val_loss")
    assert div[-1] < 0.7 * before and div[-1] < div[0], (before, div)  # measured: 0.54x
    assert len(logged(out, "val_ppl")) == len(div) and logged(out, "divergence")
    assert logged(out, "student_ce")[-1] < logged(out, "student_ce")[0]
    summary = json.loads((out / "sft_summary.json").read_text())
    assert summary["mode"] == "kd" and summary["divergence"] == "forward_kl"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()


def test_kd_at_alpha_1_is_the_sft_run(toy, tmp_path):
    """alpha=1 leaves only the cross-entropy on the labels: the same steps as `lmstack sft`."""
    common = ("--set", "steps=4", "batch_size=4", "block_size=64", "eval_every=0",
              "progress=false", "schedule.warmup_steps=0", "threads=2", "schedule.lr=3e-3",
              "log_every=1")
    assert main(["sft", "--model", str(toy / "student"), "--data", str(toy / "chats.jsonl"),
                 "--out", str(tmp_path / "sft"), *common]) == 0
    assert main(["distill", "--mode", "kd", "--teacher", str(toy / "teacher"), "--model",
                 str(toy / "student"), "--data", str(toy / "chats.jsonl"), "--out",
                 str(tmp_path / "kd"), *common, "distill.alpha=1"]) == 0
    sft_loss = logged(tmp_path / "sft", "loss")
    assert logged(tmp_path / "kd", "loss") == pytest.approx(sft_loss, rel=1e-5)
    assert logged(tmp_path / "kd", "student_ce") == pytest.approx(sft_loss, rel=1e-5)
    # and the divergence it did not train on is a different number (the control)
    assert logged(tmp_path / "kd", "divergence")[0] != pytest.approx(sft_loss[0], rel=1e-2)


def test_kd_resumes_exactly(toy, tmp_path):
    common = ("schedule.total_steps=6", "save_every=3", "log_every=1")
    assert distill(toy, tmp_path / "straight", "kd", "steps=6", *common) == 0
    assert distill(toy, tmp_path / "split", "kd", "steps=3", *common) == 0
    assert distill(toy, tmp_path / "split", "kd", "steps=6", "resume=true", *common) == 0
    a = {r["step"]: r for r in read_log(tmp_path / "straight")}
    b = {r["step"]: r for r in read_log(tmp_path / "split")}
    assert a.keys() == b.keys()
    for s in a:
        assert (a[s]["loss"], a[s]["divergence"]) == (b[s]["loss"], b[s]["divergence"]), s
    assert a[6]["val_loss"] == b[6]["val_loss"]
    sa = torch.load(tmp_path / "straight" / STATE, weights_only=False)["model"]
    sb = torch.load(tmp_path / "split" / STATE, weights_only=False)["model"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_padded_embedding_and_a_student_bigger_than_its_teacher(toy, tmp_path, tok, capsys):
    torch.manual_seed(2)
    big = write_model(tmp_path / "big", tiny(tok.vocab_size + 64, 2, 96, 4), tok)
    assert distill(toy, tmp_path / "out", "kd", "steps=2", student=big) == 0
    out = capsys.readouterr()
    assert "warning: the student" in out.err and "bigger than the teacher" in out.err
    assert f"compared over the tokenizer's {tok.vocab_size} ids" in out.out


# ---- data --------------------------------------------------------------------------------

def test_data_mode_writes_the_teachers_greedy_answers_and_trains_on_them(toy, tmp_path, corpus):
    """The student has a tokenizer of its own: data mode hands over text, not ids."""
    other = train_bpe(corpus[::2], vocab_size=600, progress=False, workers=1)
    torch.manual_seed(3)
    student = write_model(tmp_path / "student", tiny(other.vocab_size, 1, 32, 2), other)
    out = tmp_path / "data"
    assert distill(toy, out, "data", "steps=4", "distill.max_new_tokens=8",
                   "distill.generate_batch=3", "batch_size=2", student=student,
                   data="prompts.jsonl") == 0
    written = [json.loads(line) for line in (out / "distill_data.jsonl").read_text().splitlines()]
    # the answers, one prompt at a time through the engine: what the batched run must match
    teacher = load_model(toy / "teacher")
    template, ttok = model_chat_template(toy / "teacher"), Tokenizer.load(toy / "teacher" / "tokenizer.json")
    engine = Engine(teacher, ttok, eos_ids=model_eos_ids(toy / "teacher"))
    settings = answer_settings(template, ttok, 8)
    answers = []
    for line in (toy / "prompts.jsonl").read_text().splitlines():
        record = json.loads(line)
        messages = record.get("messages", [{"role": "user", "content": record.get("prompt")}])
        messages = [m for m in messages if m["role"] != "assistant"]
        c = engine.generate(template.render(messages), **settings)
        if c.finish_reason != "length":
            answers.append(c.text)
    got = [w["completion"] if "completion" in w else w["messages"][-1]["content"] for w in written]
    assert got == answers and len(got) >= 4
    assert "a wrong answer" not in json.dumps(written)  # replaced by the teacher's
    assert len(logged(out, "loss")) and (out / "model.safetensors").exists()
    progress = json.loads((out / "distill_data.progress.json").read_text())["progress"]
    assert progress["complete"] and progress["done"] == 7
    # the answers are reused by a later run: the file is not written again
    stamp = (out / "distill_data.jsonl").stat().st_mtime_ns
    assert distill(toy, out, "data", "steps=4", "distill.max_new_tokens=8",
                   "distill.generate_batch=3", "batch_size=2", student=student,
                   data="prompts.jsonl") == 0
    assert (out / "distill_data.jsonl").stat().st_mtime_ns == stamp


class FlakyEngine:
    """Answers each prompt with its ids as text; raises on call `fail_at` (a killed run)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls, self.fail_at = 0, fail_at

    def generate(self, ids, **settings):
        self.calls += 1
        if self.calls == self.fail_at:
            raise KeyboardInterrupt
        from types import SimpleNamespace

        return [SimpleNamespace(text=str(p), finish_reason="length" if p[0] == 3 else "stop")
                for p in ids]


def test_answer_file_resumes_after_a_kill_where_it_stopped(tmp_path):
    prompts = [Prompt(f"x:{i}", {"prompt": f"p{i}"}, [i]) for i in range(7)]
    key = {"teacher": "t", "data": "d"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = write_answers(FlakyEngine(), prompts, tmp_path / "a" / "d.jsonl", {}, key, chunk=2)
    with pytest.raises(KeyboardInterrupt):
        write_answers(FlakyEngine(fail_at=3), prompts, tmp_path / "b" / "d.jsonl", {}, key, chunk=2)
    assert not (tmp_path / "b" / "d.jsonl").exists()  # only a finished file has the name
    engine = FlakyEngine()
    resumed = write_answers(engine, prompts, tmp_path / "b" / "d.jsonl", {}, key, chunk=2)
    assert engine.calls == 2  # chunks 3 and 4 only
    assert (tmp_path / "a" / "d.jsonl").read_text() == (tmp_path / "b" / "d.jsonl").read_text()
    assert resumed == whole == Progress(done=7, lines=6, truncated=1, complete=True)
    with pytest.raises(Exception, match="another teacher"):
        write_answers(FlakyEngine(), prompts, tmp_path / "b" / "d.jsonl", {}, {"teacher": "u"})


# ---- bad input ---------------------------------------------------------------------------

def test_a_teacher_with_another_tokenizer_is_refused(toy, tmp_path, corpus, capsys):
    other = train_bpe(corpus[1::2], vocab_size=600, progress=False, workers=1)
    teacher = write_model(tmp_path / "teacher", tiny(other.vocab_size, 2, 64, 4), other)
    out = tmp_path / "out"
    for mode in ("kd", "gkd"):
        assert distill(toy, out, mode, "steps=2", teacher=teacher) == 2
        err = capsys.readouterr().err
        assert "tokenizers differ" in err and "data distillation" in err, err
        assert not out.exists()


@pytest.mark.parametrize(("args", "words"), [
    ({"teacher": "nowhere/teacher"}, ["--teacher", "does not exist"]),
    ({"data": "prompts.jsonl"}, ["prompts.jsonl:1", "--mode data"]),
    ({"settings": ("distill.samples_per_prompt=4",)}, ["samples_per_prompt", "teacher_temperature"]),
    ({"settings": ("distill.divergence=kl",)}, ["distill.divergence", "forward_kl"]),
])
def test_bad_input_is_refused_before_anything_is_written(toy, tmp_path, capsys, args, words):
    out = tmp_path / "out"
    paths = {k: v for k, v in args.items() if k != "settings"}
    assert distill(toy, out, "kd", "steps=2", *args.get("settings", ()), **paths) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words) and not out.exists(), err


# ---- gkd ---------------------------------------------------------------------------------

def test_gkd_at_lmbda_0_is_kd(toy, tmp_path):
    """No on-policy batch: the same batches, the same JSD, step for step."""
    common = ("steps=4", "eval_every=0", "log_every=1", "distill.divergence=jsd", "distill.beta=0.3")
    assert distill(toy, tmp_path / "kd", "kd", *common) == 0
    assert distill(toy, tmp_path / "gkd", "gkd", *common, "distill.lmbda=0") == 0
    assert logged(tmp_path / "gkd", "loss") == logged(tmp_path / "kd", "loss")
    assert logged(tmp_path / "gkd", "on_policy") == [0.0] * 4


def test_gkd_on_policy_learns_from_the_students_own_samples(toy, tmp_path):
    out, start = tmp_path / "gkd", tmp_path / "start"
    common = ("distill.lmbda=1", "distill.max_new_tokens=6", "log_every=1")
    assert distill(toy, start, "gkd", "steps=1", *common, "schedule.lr=1e-12", "schedule.min_lr=0") == 0
    assert distill(toy, out, "gkd", "steps=8", *common) == 0
    assert logged(out, "on_policy") == [1.0] * 8  # what the batches are: the test below
    before, after = logged(start, "val_loss")[-1], logged(out, "val_loss")[-1]
    # the held-out JSD on the data's answers falls, trained on the student's own samples alone
    assert after < 0.95 * before, (before, after)  # measured: 0.86x


def test_gkd_resumes_exactly(toy, tmp_path):
    common = ("distill.lmbda=0.5", "distill.max_new_tokens=6", "schedule.total_steps=6",
              "save_every=3", "log_every=1", "eval_every=0")
    assert distill(toy, tmp_path / "straight", "gkd", "steps=6", *common) == 0
    assert distill(toy, tmp_path / "split", "gkd", "steps=3", *common) == 0
    assert distill(toy, tmp_path / "split", "gkd", "steps=6", "resume=true", *common) == 0
    a, b = read_log(tmp_path / "straight"), read_log(tmp_path / "split")
    assert [(r["loss"], r["on_policy"]) for r in a] == [(r["loss"], r["on_policy"]) for r in b]
    assert 0 < sum(r["on_policy"] for r in a) < 6  # both kinds of batch were in the run


def test_on_policy_batches_answer_the_datas_prompts_with_the_students_samples(toy, tok):
    from lmstack.posttrain.distill_config import DistillSettings
    from lmstack.posttrain.gkd import OnPolicyLoader, batch_prompts
    from lmstack.posttrain.sft import SFTLoader
    from lmstack.posttrain.sft_data import collate, load_sft_examples, pack
    from lmstack.tokenizer.chat_template import ChatTemplate

    examples = load_sft_examples(toy / "chats.jsonl", tok, ChatTemplate())[:12]
    rows = pack(examples, 64)  # several examples a row: prompts are found per segment
    assert any(len(r.sources) > 1 for r in rows)
    by_source = {e.source: e.prompt_ids() for e in examples}
    assert batch_prompts(collate(rows, 64)) == [by_source[s] for r in rows for s in r.sources]

    student = load_model(toy / "student")

    def loader(lmbda: float, seed: int = 0) -> OnPolicyLoader:
        o = OnPolicyLoader(SFTLoader(rows, 2, 64, seed=5), tok, ChatTemplate(), None,
                           DistillSettings(lmbda=lmbda, max_new_tokens=5), seed)
        o.policy = student
        return o

    data = SFTLoader(rows, 2, 64, seed=5).next_batch()
    assert all(torch.equal(a, b) for a, b in zip(loader(0.0).next_batch(), data))
    ids, labels = loader(1.0).next_batch()
    prompts = batch_prompts(data)
    assert ids.shape[0] == len(prompts) > 2  # one row per example, not per packed row
    for row, lab, p in zip(ids, labels, prompts):
        assert row[:len(p)].tolist() == p and bool((lab[:len(p) - 1] == -100).all())
        assert 1 <= int((lab != -100).sum()) <= 6  # max_new_tokens, plus a stop id
    again, other = loader(1.0).next_batch()[0], loader(1.0, seed=1).next_batch()[0]
    assert torch.equal(again, ids) and not torch.equal(other, ids)  # seeded, and the seed matters

"""Bad GGUF files through the CLI, as a user meets them: `lmstack convert --src bad.gguf` and
`lmstack generate --model bad.gguf` print one line naming the file and the problem, exit 2,
show no traceback, and leave no --dst directory behind."""

from __future__ import annotations


from tests.cli_cases import run_cases
from tests.interop.gguf_fixtures import hf_model, tiny_vocab, write_gguf


def bad_files(d):
    """{name: (path, what the message must say)}."""
    model = hf_model("llama")
    good = d / "good.gguf"
    write_gguf(good, model, "llama", "F32")
    data = good.read_bytes()
    files = {}
    for name, content in (("cut-data", data[:len(data) * 2 // 3]), ("cut-header", data[:300])):
        (d / f"{name}.gguf").write_bytes(content)
        files[name] = (d / f"{name}.gguf", "is truncated")
    write_gguf(d / "phi3.gguf", model, "phi3", "F32")
    files["architecture"] = (d / "phi3.gguf", "GGUF architecture 'phi3' is not supported")
    write_gguf(d / "iq2.gguf", model, "llama", "IQ2_XXS")
    files["type"] = (d / "iq2.gguf", "is stored as IQ2_XXS, a ggml type lmstack does not read")
    write_gguf(d / "spm.gguf", model, "llama", "F32", extra=tiny_vocab("llama"))
    files["tokenizer"] = (d / "spm.gguf",
                          "tokenizer.ggml.model is 'llama'; lmstack reads byte-level BPE")
    (d / "notes.gguf").write_text("these are my notes, not a model\n")
    files["not-gguf"] = (d / "notes.gguf", "is not a GGUF file")
    return files


def test_bad_gguf_files_are_one_line_errors_and_leave_nothing(tmp_path):
    files = bad_files(tmp_path)
    cases, expect = [], []
    for name, (path, message) in files.items():
        dst = tmp_path / f"out-{name}" / "model"
        cases += [["convert", "--src", str(path), "--dst", str(dst)],
                  ["generate", "--model", str(path), "--prompt", "hi", "--max-new-tokens", "2"]]
        expect += [(path, message, dst)] * 2
    results = run_cases(cases, tmp_path)
    for argv, (code, err, _), (path, message, dst) in zip(cases, results, expect):
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert str(path) in err and message in err, (argv, err)
        assert not dst.parent.exists(), argv  # no half-written directory (nor its parent)


def test_convert_refuses_gguf_flags_for_other_sources_and_same_paths(tmp_path):
    model = hf_model("llama")
    write_gguf(tmp_path / "m.gguf", model, "llama", "F32")
    src = ["convert", "--src", str(tmp_path / "m.gguf")]
    cases = [[*src, "--dst", str(tmp_path / "m.gguf")],
             [*src, "--dst", str(tmp_path / "x"), "--to", "hf"],
             [*src, "--dst", str(tmp_path / "y"), "--from", "hf"]]
    messages = ["same directory or file", "converting a GGUF model to hf is not supported",
                "--from hf but"]
    for (code, err, _), message in zip(run_cases(cases, tmp_path), messages):
        assert code == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_convert_to_gguf_re_exports_a_gguf_file(tmp_path):
    import torch

    from lmstack.models.directory import load_model

    write_gguf(tmp_path / "m.gguf", hf_model("llama"), "llama", "F32", extra=tiny_vocab())
    cases = [["convert", "--src", "m.gguf", "--dst", "m.f32.gguf", "--to", "gguf", "--type", "f32"],
             ["convert", "--src", "m.gguf", "--dst", "d", "--type", "q8_0"]]
    (code, err, out), (code2, err2, _) = run_cases(cases, tmp_path)
    assert code == 0 and "wrote" in out, err
    assert code2 == 2 and "--type q8_0 applies to --to gguf" in err2 and not (tmp_path / "d").exists()
    a, b = load_model(tmp_path / "m.gguf"), load_model(tmp_path / "m.f32.gguf")
    x = torch.randint(0, a.config.vocab_size, (1, 8))
    assert torch.equal(a(x), b(x))  # F32 to F32: the same function

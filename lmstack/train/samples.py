"""A minimal sampler for progress reports during training (the real engine is lmstack.infer).

The training loop may not import the inference layer (it sits above), so this is the smallest
temperature sampler that works with any model of the protocol: prefill, then one token at a
time through the model's cache.
"""

from __future__ import annotations

import torch

from lmstack.tokenizer import Tokenizer


@torch.no_grad()
def sample_text(model, tok: Tokenizer, prompt: str, max_new_tokens: int, temperature: float,
                device: torch.device, seed: int = 0) -> str:
    """Continue `prompt` (empty: start after <|endoftext|>) by sampling; returns the new text."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    ids = tok.encode(prompt) if prompt else [tok.eot_id]
    limit = getattr(model.config, "block_size", None)
    max_len = min(len(ids) + max_new_tokens, limit) if limit else len(ids) + max_new_tokens
    ids = ids[-(max_len - 1):] if limit else ids
    cache = model.new_cache(1, max_len)
    x = torch.tensor([ids], device=device)
    out: list[int] = []
    for _ in range(max_len - len(ids)):
        logits = model(x, cache=cache)[0, -1].float().cpu()
        if temperature <= 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen))
        if nxt == tok.eot_id:
            break
        out.append(nxt)
        x = torch.tensor([[nxt]], device=device)
    model.train(was_training)
    return tok.decode(out)

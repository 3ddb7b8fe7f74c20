"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning"): n trainable "virtual token" vectors prepended to the input embeddings of a frozen
model; only those n · d numbers train.

`PromptTuningModel` wraps a GPT. It gives the model's token embedding `wte` the prompt as
extra rows (`PromptEmbedding`: ids vocab_size .. vocab_size+n-1 look up the virtual tokens),
prepends those ids to the input, and returns the logits of the real positions only, so it is a
drop-in language model: `sft_loss(wrapped, batch)` and the trainer run on it unchanged.

- A plain row (B, T) becomes n virtual tokens at positions 0..n-1, then the row at n..n+T-1
  (what Hugging Face PEFT computes).
- A packed row (several examples; `segment_ids` 1, 2, ... and 0 for padding, `position_ids`
  restarting per example, as lmstack/posttrain/sft_data.py packs them) gets the prompt in front
  of *every* example, with that example's segment id and positions 0..n-1, its own tokens
  shifted to n...: each example sees the prompt as its own prefix and computes exactly what it
  computes alone (tests/posttrain/test_prompt_tuning.py). A row of k examples grows by n·k.
- Decoding with a KV cache: the first call (an empty cache) prepends the prompt; later steps
  run the model plainly. `new_cache` makes room for the n virtual tokens.

    >>> import torch
    >>> from lmstack.models import GPT, GPTConfig
    >>> model = apply_prompt_tuning(GPT(GPTConfig(vocab_size=50, block_size=32, n_embd=32)),
    ...                             PromptTuningConfig(num_virtual_tokens=4))
    >>> model(torch.zeros(2, 5, dtype=torch.long)).shape  # the real positions only
    torch.Size([2, 5, 50])
    >>> [n for n, p in model.named_parameters() if p.requires_grad]
    ['model.wte.prompt_embeddings']

On disk: Hugging Face PEFT's PROMPT_TUNING adapter directory (adapter_config.json with
num_virtual_tokens, token_dim, ...; adapter_model.safetensors with `prompt_embeddings` (n, d)),
loadable both ways with `peft` on the exported HF model.

Run the tests: `pytest tests/posttrain/test_prompt_tuning.py lmstack/posttrain/peft/prompt_tuning.py --doctest-modules`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.kv_cache import KVCache
from lmstack.posttrain.peft.adapter import (
    read_method_config,
    read_tensors,
    write_adapter,
)

PEFT_TYPE = "PROMPT_TUNING"
TENSOR = "prompt_embeddings"  # PEFT's key in adapter_model.safetensors


def _init_vocab(table: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Embeddings of n token ids drawn at random: Lester et al.'s vocabulary init."""
    return table[torch.randint(0, table.size(0), (n,), generator=g)].clone()


def _init_random(table: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Uniform in [-0.5, 0.5]: the paper's random init."""
    return torch.rand(n, table.size(1), generator=g, dtype=torch.float64).sub(0.5).to(table.dtype)


# init name -> (embedding table (V, d), n, generator) -> the initial prompt (n, d)
INITS = {"vocab": _init_vocab, "random": _init_random}


@dataclass
class PromptTuningConfig:
    """How many virtual tokens, and how they start."""

    num_virtual_tokens: int = 20   # n: the soft prompt's length
    init: str = "vocab"            # "vocab" (embeddings of random tokens) or "random" (uniform)
    seed: int = 0                  # for the init

    def __post_init__(self) -> None:
        if not isinstance(self.num_virtual_tokens, int) or self.num_virtual_tokens < 1:
            raise ConfigError(f"num_virtual_tokens must be a positive integer, got {self.num_virtual_tokens!r}")
        if self.init not in INITS:
            raise ConfigError(f"prompt tuning init {self.init!r} is unknown; choose one of {sorted(INITS)}")


class PromptEmbedding(nn.Embedding):
    """The model's token embedding plus n trainable rows: ids below vocab_size read the frozen
    table (`weight`, the same parameter object, so a tied head stays tied), ids vocab_size..
    vocab_size+n-1 read `prompt_embeddings` (n, d)."""

    def __init__(self, base: nn.Embedding, prompt: torch.Tensor) -> None:
        super().__init__(base.num_embeddings, base.embedding_dim, device="meta")
        self.weight = base.weight
        self.weight.requires_grad_(False)
        self.prompt_embeddings = nn.Parameter(prompt.to(base.weight.device, base.weight.dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        vocab = self.num_embeddings
        virtual = ids >= vocab                                            # (B, T)
        real = F.embedding(ids.clamp(max=vocab - 1), self.weight)         # (B, T, d)
        prompt = self.prompt_embeddings[(ids - vocab).clamp(min=0)]       # (B, T, d)
        return torch.where(virtual[..., None], prompt, real)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, virtual_tokens={self.prompt_embeddings.size(0)}"


class PromptTuningModel(nn.Module):
    """A frozen GPT behind a trainable soft prompt; same call and logits shape as the GPT."""

    def __init__(self, model: nn.Module, prompt: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        model.wte = PromptEmbedding(model.wte, prompt)

    @property
    def num_virtual_tokens(self) -> int:
        return self.model.wte.prompt_embeddings.size(0)

    @property
    def prompt_embeddings(self) -> nn.Parameter:
        """The trainable soft prompt (n, d): the parameters to give the optimizer."""
        return self.model.wte.prompt_embeddings

    def virtual_ids(self, rows: int, device: torch.device) -> torch.Tensor:
        """(rows, n): the ids PromptEmbedding reads the prompt at."""
        n, vocab = self.num_virtual_tokens, self.model.wte.num_embeddings
        return (vocab + torch.arange(n, device=device)).expand(rows, n)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """The model's KV cache with room for the n virtual tokens in front."""
        max_len = max_len if max_len is not None else self.config.block_size - self.num_virtual_tokens
        return self.model.new_cache(batch_size, max_len + self.num_virtual_tokens)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                lengths: torch.Tensor | None = None, last_only: bool = False,
                segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab) of the real positions of ids (B, T); arguments as GPT.forward."""
        n = self.num_virtual_tokens
        if segment_ids is not None:
            if cache is not None:
                raise ConfigError("packed rows (segment_ids) take no KV cache")
            ids, seg, pos, real = packed_with_prompts(idx, segment_ids, position_ids, self.virtual_ids(1, idx.device)[0])
            logits = self.model(ids, segment_ids=seg, position_ids=pos)     # (B, L, V)
            return logits[real].view(*idx.shape, -1)                        # (B, T, V)
        if cache is not None and cache.length > 0:
            return self.model(idx, cache=cache, lengths=lengths, last_only=last_only)  # past the prompt
        ids = torch.cat([self.virtual_ids(idx.size(0), idx.device), idx], dim=1)   # (B, n + T)
        logits = self.model(ids, cache=cache, lengths=None if lengths is None else torch.as_tensor(lengths) + n,
                            last_only=last_only)
        return logits if last_only else logits[:, n:]


def packed_with_prompts(idx: torch.Tensor, segment_ids: torch.Tensor, position_ids: torch.Tensor | None,
                        virtual: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """(ids, segment_ids, position_ids, real) of packed rows with the n `virtual` ids inserted
    before every example (segment id > 0), each copy in its example's segment at positions
    0..n-1 and the example's own positions shifted by n; `real` (B, L) marks the original tokens.
    Rows with fewer examples end in padding (segment 0)."""
    B, T = idx.shape
    n = virtual.numel()
    pos = position_ids if position_ids is not None else torch.arange(T, device=idx.device).expand(B, T)
    before = F.pad(segment_ids[:, :-1], (1, 0))                           # (B, T): the previous token's segment
    starts = (segment_ids != 0) & (segment_ids != before)                 # (B, T): first token of an example
    new_at = torch.arange(T, device=idx.device) + n * starts.cumsum(1)    # (B, T): where each token goes
    L = T + n * int(starts.sum(1).max())
    ids, seg, new_pos = (torch.zeros(B, L, dtype=torch.long, device=idx.device) for _ in range(3))
    real = torch.zeros(B, L, dtype=torch.bool, device=idx.device)
    ids.scatter_(1, new_at, idx.long())
    seg.scatter_(1, new_at, segment_ids.long())
    new_pos.scatter_(1, new_at, pos.long() + n)
    real.scatter_(1, new_at, True)
    rows, cols = starts.nonzero(as_tuple=True)                            # (K,): one per example
    slots = (new_at[rows, cols] - n)[:, None] + torch.arange(n, device=idx.device)  # (K, n)
    ids[rows[:, None], slots] = virtual
    seg[rows[:, None], slots] = segment_ids[rows, cols].long()[:, None]
    new_pos[rows[:, None], slots] = torch.arange(n, device=idx.device)
    return ids, seg, new_pos, real


def _embedding(model: nn.Module) -> nn.Embedding:
    """The model's token embedding; ConfigError if it has none we can extend."""
    wte = getattr(model, "wte", None)
    if isinstance(model, PromptTuningModel) or isinstance(wte, PromptEmbedding):
        raise ConfigError("the model already has a soft prompt; start from a fresh base model")
    if type(wte) is not nn.Embedding or not hasattr(model, "config"):
        raise ConfigError(f"prompt tuning needs a GPT (a token embedding `wte`); got {type(model).__name__}")
    return wte


def apply_prompt_tuning(model: nn.Module, cfg: PromptTuningConfig | None = None) -> PromptTuningModel:
    """Freeze `model` and wrap it behind a trainable soft prompt of cfg.num_virtual_tokens."""
    cfg = cfg if cfg is not None else PromptTuningConfig()
    wte = _embedding(model)
    g = torch.Generator().manual_seed(cfg.seed)
    prompt = INITS[cfg.init](wte.weight.detach().cpu(), cfg.num_virtual_tokens, g)  # (n, d)
    for p in model.parameters():
        p.requires_grad_(False)
    return PromptTuningModel(model, prompt)


def save_prompt_tuning(model: PromptTuningModel, directory: str | os.PathLike,
                       base_model_name_or_path: str | None = None) -> Path:
    """Write the soft prompt as a PEFT PROMPT_TUNING adapter directory; returns it."""
    if not isinstance(model, PromptTuningModel):
        raise ConfigError("save_prompt_tuning: the model has no soft prompt; apply_prompt_tuning (and train) first")
    c = model.config
    config = {"peft_type": PEFT_TYPE, "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
              "num_virtual_tokens": model.num_virtual_tokens, "token_dim": c.n_embd,
              "num_transformer_submodules": 1, "num_attention_heads": c.n_head, "num_layers": c.n_layer,
              "prompt_tuning_init": "RANDOM", "prompt_tuning_init_text": None, "tokenizer_name_or_path": None,
              "tokenizer_kwargs": None, "revision": None, "inference_mode": True, "auto_mapping": None,
              "modules_to_save": None}
    return write_adapter(directory, config, {TENSOR: model.prompt_embeddings})


def load_prompt_tuning(model: nn.Module, directory: str | os.PathLike) -> PromptTuningModel:
    """The base `model` behind the soft prompt saved in `directory` (ours or PEFT's);
    ConfigError, before any change, if it was trained for another base."""
    d = Path(directory)
    config = read_method_config(d, PEFT_TYPE)
    wte = _embedding(model)
    n, c = config.get("num_virtual_tokens"), model.config
    if config.get("num_transformer_submodules") not in (None, 1):
        raise ConfigError(f"{d}: num_transformer_submodules={config['num_transformer_submodules']} is an "
                          "encoder-decoder prompt; lmstack's GPT takes one (a decoder-only model)")
    mine = {"token_dim": c.n_embd, "num_layers": c.n_layer, "num_attention_heads": c.n_head}
    differ = {k: (config[k], v) for k, v in mine.items() if config.get(k) is not None and config[k] != v}
    prompt = read_tensors(d).get(TENSOR)
    if differ:
        raise ConfigError(f"{d} is a prompt for another base: " + ", ".join(
            f"its {k} is {a}, this model's {b}" for k, (a, b) in differ.items()) + "; load it onto the model it was trained on")
    if prompt is None or not isinstance(n, int) or tuple(prompt.shape) != (n, wte.embedding_dim):
        raise ConfigError(f"{d}: expected a {TENSOR!r} tensor of shape ({n}, {wte.embedding_dim}), got "
                          f"{None if prompt is None else tuple(prompt.shape)}; the adapter is corrupt or for another base")
    for p in model.parameters():
        p.requires_grad_(False)
    return PromptTuningModel(model, prompt)

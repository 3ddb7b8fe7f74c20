"""GPT: the decoder-only transformer language model, configurable from GPT-2 to Llama.

Token embeddings (`wte`) go through `n_layer` pre-norm blocks — x + attn(norm(x)), then
x + mlp(norm(x)) — a final norm (`ln_f`) and a linear head (`lm_head`) to vocabulary logits.
That is GPT-2 (Radford et al. 2019) with the knobs later models turned, each a config field:

| field | GPT-2 | Llama |
|---|---|---|
| position | "learned" | "rope" (rope_theta) |
| norm | "layernorm" | "rmsnorm" |
| mlp | "gelu" | "swiglu" |
| bias | True | False |
| tie_embeddings | True | False |
| n_kv_head | = n_head | < n_head (grouped-query) |

plus "alibi"/"none" positions, "relu"/"relu2" MLPs, QK-norm, dropout, the attention kernel and
`sliding_window` (Mistral; Jiang et al. 2023, after Child et al. 2019 and Beltagy et al. 2020):
each query attends to only the last `sliding_window` keys, itself included. `block_size` is the
hard limit for every position scheme: a forward (cache included) past it raises `ConfigError`.
Weights are initialized as in GPT-2: N(0, 0.02), with the projections that write into the
residual stream (`o_proj`, `down_proj`) scaled by 1/sqrt(2·n_layer) so the stream's variance
does not grow with depth.

It follows the language model protocol (protocol.py): `model(idx)` for ids (B, T) returns
logits (B, T, vocab_size); `model(idx, cache=model.new_cache(B, max_len))` decodes
incrementally through a `KVCache`.

    >>> import torch
    >>> model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    >>> model(torch.zeros(3, 5, dtype=torch.long)).shape
    torch.Size([3, 5, 50])
    >>> GPTConfig(n_embd=100, n_head=3)
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: n_embd 100 is not divisible by n_head 3; choose n_embd as a multiple of n_head

Run the tests: `pytest tests/models/test_gpt.py tests/models/test_reference.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.attention import ATTENTION, CausalSelfAttention, causal_bias
from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.kv_cache import KVCache
from lmstack.models.mlp import MLPS, default_hidden
from lmstack.models.norms import NORMS
from lmstack.models.positions import POSITIONS, check_rope_scaling
from lmstack.models.protocol import check_idx, last_positions


@dataclass
class GPTConfig(ModelConfig):
    """Architecture of a `GPT`; the defaults are a tiny GPT-2 that trains on a CPU."""

    vocab_size: int = 256          # token ids are 0..vocab_size-1 (256 = raw bytes)
    block_size: int = 256          # context length trained on; no forward may run past it
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # query heads; head_dim = n_embd // n_head
    n_kv_head: int | None = None   # key/value heads: None = n_head (MHA), 1 = MQA, between = GQA
    n_embd: int = 128              # width of the residual stream
    position: str = "learned"      # "learned", "rope", "alibi" or "none" (see positions.py)
    rope_theta: float = 10000.0    # RoPE base: larger = slower rotation, longer reach
    rope_scaling: dict | None = None  # {"rope_type": "linear"|"llama3", "factor": ...} (positions.py)
    norm: str = "layernorm"        # "layernorm" or "rmsnorm", applied before each sublayer
    norm_eps: float = 1e-5         # added to the variance inside the norm
    mlp: str = "gelu"              # "gelu" (tanh approx.), "relu", "relu2" or "swiglu"
    intermediate_size: int | None = None  # MLP hidden size; None = 4·n_embd, or ~8/3·n_embd for swiglu
    dropout: float = 0.0           # on embeddings, attention weights and residual branches
    bias: bool = True              # biases in Linear layers and LayerNorm
    qkv_bias: bool | None = None   # biases on q/k/v projections only (Qwen2); None = follow `bias`
    tie_embeddings: bool = True    # lm_head shares its weight with wte
    qk_norm: bool = False          # normalize queries and keys per head before attention
    attn_impl: str = "sdpa"        # "sdpa" (fused kernel) or "manual" (written out)
    sliding_window: int | None = None  # each query sees the last this-many keys; None = all
    init_std: float = 0.02         # std of the normal initialization

    model_types = ("gpt",)

    @property
    def model_type(self) -> str:
        return "gpt"

    @property
    def head_dim(self) -> int:
        """Features per attention head."""
        return self.n_embd // self.n_head

    @property
    def hidden_size(self) -> int:
        """The MLP's hidden size, resolving the default."""
        return self.intermediate_size or default_hidden(self.mlp, self.n_embd)

    def validate(self) -> None:
        check_transformer_fields(self)
        require(self.sliding_window is None or self.sliding_window >= 1,
                f"sliding_window must be at least 1 or null (full attention), got {self.sliding_window}")


def check_transformer_fields(c: GPTConfig | Any) -> None:
    """The checks of the fields every transformer config shares with GPTConfig (sizes, heads,
    registry names, RoPE, dropout...): GPTConfig's and the encoder's (encoder.py) `validate`."""
    for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(c, name)
        require(value >= 1, f"{name} must be at least 1, got {value}")
    require(c.n_embd % c.n_head == 0,
            f"n_embd {c.n_embd} is not divisible by n_head {c.n_head}; "
            "choose n_embd as a multiple of n_head")
    kv = c.n_kv_head if c.n_kv_head is not None else c.n_head
    require(1 <= kv <= c.n_head and c.n_head % kv == 0,
            f"n_kv_head {kv} must divide n_head {c.n_head}; choose a divisor of n_head "
            "(1 = multi-query, n_head = multi-head attention)")
    require_choice("position", c.position, POSITIONS)
    require_choice("norm", c.norm, NORMS)
    require_choice("mlp", c.mlp, MLPS)
    require_choice("attn_impl", c.attn_impl, ATTENTION)
    require(c.position != "rope" or c.head_dim % 2 == 0,
            f"RoPE rotates feature pairs, so head_dim (n_embd / n_head = {c.head_dim}) must be even")
    require(c.intermediate_size is None or c.intermediate_size >= 1,
            f"intermediate_size must be at least 1 or null, got {c.intermediate_size}")
    require(0.0 <= c.dropout < 1.0, f"dropout {c.dropout} must be in [0, 1)")
    if c.rope_scaling is not None:
        check_rope_scaling(c.rope_scaling)
    for name in ("rope_theta", "norm_eps", "init_std"):
        value = getattr(c, name)
        require(value > 0, f"{name} must be positive, got {value}")


class Block(nn.Module):
    """One pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLPS[config.mlp](config.n_embd, config.hidden_size, bias=config.bias, dropout=config.dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                bias: torch.Tensor | None = None, cache: KVCache | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); attention reads and extends `cache` if given."""
        x = x + self.attn(self.ln_1(x), rope, bias, cache)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """Decoder-only transformer LM: ids (B, T) -> next-token logits (B, T, vocab_size)."""

    config_class = GPTConfig

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()
        self.config = config = config if config is not None else GPTConfig()
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.position = POSITIONS[config.position](config)
        self.drop = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.ln_f = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            # Press & Wolf 2017: input and output embeddings are one matrix.
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        residual_std = config.init_std / math.sqrt(2 * config.n_layer)
        for block in self.layers:
            nn.init.normal_(block.attn.o_proj.weight, std=residual_std)
            nn.init.normal_(block.mlp.down_proj.weight, std=residual_std)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=self.config.init_std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_len` (default block_size) tokens."""
        c = self.config
        max_len = max_len if max_len is not None else c.block_size
        self.check_length(max_len)
        weight = self.wte.weight
        return KVCache(c.n_layer, batch_size, c.n_kv_head or c.n_head, max_len, c.head_dim,
                       dtype=weight.dtype, device=weight.device)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None,
                lengths: torch.Tensor | None = None, last_only: bool = False,
                segment_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for ids (B, T), continuing from `cache` if given.

        `lengths` (B,) marks right padding: row b's real tokens are its first lengths[b]; the
        cache advances each row by its own length (logits at padded positions are meaningless).
        `last_only` returns (B, 1, vocab_size): the logits of each row's last real token only,
        all a decoder's prefill needs (the head over every position of a long prompt is waste).
        `segment_ids` and `position_ids` (B, T) read a packed row (several examples one after
        another, as fine-tuning packs them): a token attends only to earlier tokens of its own
        segment, and positions restart per example, so each example computes what it would alone."""
        x = self.hidden(idx, cache, lengths, last_only, segment_ids, position_ids)
        return self.lm_head(x)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None,
               lengths: torch.Tensor | None = None, last_only: bool = False,
               segment_ids: torch.Tensor | None = None,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden state (B, T, n_embd): the final norm's output that `lm_head` maps
        to logits (`forward` is `lm_head(hidden(...))`); Medusa heads read it
        (lmstack/infer/medusa_drafter.py). Arguments as in `forward`."""
        if segment_ids is not None:
            return self._packed_hidden(idx, segment_ids, position_ids)
        B, T = check_idx(idx)
        start, row_pos = 0, None
        if cache is not None:
            cache.check_room(B, T)
            start = cache.length  # a Python int (the longest row): no device sync
            row_pos = cache.positions(T)  # (B, T) when rows differ in length
        self.check_length(start + T, start)
        pos = torch.arange(start, start + T, device=idx.device) if row_pos is None else row_pos
        x = self.drop(self.position.embed(self.wte(idx), pos))
        rope = self.position.rotary(pos)                   # computed once, used by every layer
        bias = self.attention_bias(pos, start + T, x.dtype)
        for block in self.layers:
            x = block(x, rope, bias, cache)
        if cache is not None:
            cache.advance(T, None if lengths is None else torch.as_tensor(lengths))
        if last_only:
            x = last_positions(x, lengths)  # (B, 1, C): the head runs on these alone
        return self.ln_f(x)

    def _packed_hidden(self, idx: torch.Tensor, segment_ids: torch.Tensor,
                       position_ids: torch.Tensor | None) -> torch.Tensor:
        """`hidden` of packed rows (no cache): block-diagonal causal attention, own positions."""
        B, T = check_idx(idx)
        if segment_ids.shape != idx.shape or (position_ids is not None and position_ids.shape != idx.shape):
            raise ConfigError(f"segment_ids and position_ids must have the shape of the ids {tuple(idx.shape)}, "
                              f"got {tuple(segment_ids.shape)} and "
                              f"{None if position_ids is None else tuple(position_ids.shape)}")
        pos = position_ids if position_ids is not None else torch.arange(T, device=idx.device).expand(B, T)
        self.check_length(int(pos.max()) + 1)
        x = self.drop(self.position.embed(self.wte(idx), pos))
        rope = self.position.rotary(pos)
        at = torch.arange(T, device=idx.device)
        allowed = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (at[:, None] >= at[None, :])
        if self.config.sliding_window is not None:
            allowed &= (at[:, None] - at[None, :]) < self.config.sliding_window
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=idx.device)
        bias = bias.masked_fill(~allowed, float("-inf")).unsqueeze(1)     # (B, 1, T, T)
        alibi = self.position.attn_bias(pos, pos)                          # (B, H, T, T) or None
        if alibi is not None:
            bias = bias + alibi.to(x.dtype)
        for block in self.layers:
            x = block(x, rope, bias)
        return self.ln_f(x)

    def check_length(self, length: int, cached: int = 0) -> None:
        """Raise `ConfigError` if `length` positions (`cached` of them in a cache) exceed
        block_size, the model's context: learned positions have no vector past it, and no
        scheme was trained past it."""
        limit = self.config.block_size
        if length <= limit:
            return
        why = (f"learned position embeddings exist only for positions 0..{limit - 1}"
               if self.config.position == "learned" else
               f"the model's context ({self.config.position} positions; an imported model's "
               "max_position_embeddings) ends there")
        where = f" ({cached} cached + {length - cached} new)" if cached else ""
        raise ConfigError(f"sequence length {length}{where} exceeds block_size {limit}: {why}; "
                          f"crop the input to the last {limit} tokens, or use a model with a larger block_size")

    def attention_bias(self, pos: torch.Tensor, n_keys: int, dtype: torch.dtype) -> torch.Tensor | None:
        """Additive causal mask (+ sliding window, + ALiBi) for queries at `pos` (T,) or per row
        (B, T) over keys 0..n_keys-1; None = plain causal."""
        k_pos = torch.arange(n_keys, device=pos.device)
        alibi = self.position.attn_bias(pos, k_pos)
        window = self.config.sliding_window
        if (alibi is None and pos.dim() == 1 and (n_keys == pos.numel() or pos.numel() == 1)
                and (window is None or n_keys <= window)):
            # Queries are exactly the keys (the kernel's is_causal fast path), or one query that
            # sees every key (a decode step), and no key is out of the window: no mask needed.
            return None
        bias = causal_bias(pos, k_pos, dtype, window)  # (T, S) or (B, T, S)
        if pos.dim() == 2:
            bias = bias.unsqueeze(1)  # (B, 1, T, S): one mask for every head of a row
        return bias if alibi is None else bias + alibi.to(dtype)

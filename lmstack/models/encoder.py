"""Encoder: the bidirectional transformer of BERT (Devlin et al. 2019), built from the GPT's parts.

Token embeddings (`wte`) + positions (`position`) + token-type embeddings (`wtt`, the segment
A/B of a sentence pair), a norm (`ln_emb`), then `n_layer` blocks whose attention sees the whole
sequence (no causal mask; a padding mask hides padded keys), then a head. Attention, norms, MLPs
and positions are the GPT's own modules (attention.py with `causal=False`, norms.py, mlp.py,
positions.py), so the GPT's options all work here too:

| field | BERT | a pre-norm encoder |
|---|---|---|
| norm_position | "post": x = norm(x + f(x)) | "pre": x = x + f(norm(x)), then `ln_f` |
| embedding_norm | True | False |
| position | "learned" (block_size = 512) | "rope", "alibi" (symmetric), "none" |
| norm, norm_eps | "layernorm", 1e-12 | "rmsnorm", 1e-5 |
| mlp | "gelu_exact" (erf GELU) | "gelu", "swiglu", ... |

Heads (`head`): "mlm", BERT's masked-LM head: a transform (dense, the MLP's activation, norm)
then a decoder tied to `wte` plus a bias, logits (B, T, vocab_size); "classification": a linear
layer on the pooled vector, (B, num_labels); "none": the last hidden state (B, T, n_embd). The
pooler (`pooler=True`) is tanh(dense(h[:, 0])): the first token's ([CLS]) vector, BERT's summary
of the sequence.

`model(ids, attention_mask, token_type_ids)` returns the head's output; `model.encode(...)` an
`EncoderOutput`: the last hidden state, every layer's (`output_hidden_states=True`) and the pooled
vector. An encoder is not a language model (no next-token logits, no cache), so it is registered
in `ENCODERS`, not `MODELS` (registry.py). Its config.json says `"model_type": "encoder"`.

    >>> import torch
    >>> model = Encoder(EncoderConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=32))
    >>> ids = torch.tensor([[2, 7, 9, 3], [2, 5, 3, 0]])      # the second row is padded
    >>> model(ids, attention_mask=torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])).shape
    torch.Size([2, 4, 50])
    >>> model(torch.zeros(1, 9, dtype=torch.long))
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: input of 9 tokens is longer than the encoder's 8 positions (block_size; max_position_embeddings in a Hugging Face config): truncate it to 8 tokens (ask the tokenizer for truncation) or split the text

Run the tests: `pytest lmstack/models/encoder.py tests/models/test_encoder.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from lmstack.errors import ConfigError
from lmstack.models.attention import CausalSelfAttention
from lmstack.models.config import ModelConfig, require, require_choice
from lmstack.models.gpt import check_transformer_fields
from lmstack.models.mlp import ACTIVATIONS, MLPS, default_hidden, mlp_activation
from lmstack.models.norms import NORMS
from lmstack.models.positions import POSITIONS
from lmstack.models.protocol import check_idx

NORM_POSITIONS = ("post", "pre")


@dataclass
class EncoderConfig(ModelConfig):
    """Architecture of an `Encoder`; the defaults are a tiny BERT that trains on a CPU."""

    vocab_size: int = 256          # token ids are 0..vocab_size-1
    block_size: int = 128          # positions: no input may be longer (BERT: 512)
    type_vocab_size: int = 2       # token types (segments A/B); 0 = no token-type embeddings
    n_layer: int = 4               # transformer blocks
    n_head: int = 4                # query heads; head_dim = n_embd // n_head
    n_kv_head: int | None = None   # key/value heads: None = n_head (MHA), fewer = GQA
    n_embd: int = 128              # width of the residual stream
    position: str = "learned"      # "learned", "rope", "alibi" or "none" (positions.py)
    rope_theta: float = 10000.0    # RoPE base
    rope_scaling: dict | None = None  # RoPE scaling (positions.py)
    norm: str = "layernorm"        # "layernorm" or "rmsnorm"
    norm_eps: float = 1e-12        # BERT's epsilon
    norm_position: str = "post"    # "post" (BERT: norm after each residual add) or "pre" (GPT's)
    embedding_norm: bool = True    # normalize the summed embeddings (BERT); pre-norm models skip it
    mlp: str = "gelu_exact"        # any of mlp.py's MLPS; BERT's GELU is the exact (erf) one
    intermediate_size: int | None = None  # MLP hidden size; None = 4·n_embd (8/3·n_embd for swiglu)
    dropout: float = 0.0           # embeddings, attention weights, residual branches, classifier
    bias: bool = True              # biases in Linear layers and LayerNorm
    qkv_bias: bool | None = None   # biases on q/k/v only; None = follow `bias`
    qk_norm: bool = False          # normalize queries and keys per head
    attn_impl: str = "sdpa"        # "sdpa" (fused) or "manual" (written out)
    pooler: bool = False           # tanh(dense(first token)): BERT's pooled vector
    head: str = "mlm"              # "mlm", "classification" or "none" (HEADS)
    num_labels: int = 2            # classes of the "classification" head
    tie_embeddings: bool = True    # the MLM decoder shares its weight with wte
    init_std: float = 0.02         # std of the normal initialization

    model_types = ("encoder",)

    @property
    def model_type(self) -> str:
        return "encoder"

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
        require(self.type_vocab_size >= 0, f"type_vocab_size must be 0 (none) or more, got {self.type_vocab_size}")
        require(self.norm_position in NORM_POSITIONS,
                f"norm_position {self.norm_position!r} is not one of {list(NORM_POSITIONS)}; pick one of them")
        require_choice("head", self.head, HEADS)
        require(self.head != "classification" or self.pooler,
                "head 'classification' reads the pooled first token: set pooler=true")
        require(self.num_labels >= 1, f"num_labels must be at least 1, got {self.num_labels}")


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, S) mask, 1 for real tokens and 0 for padding -> additive (B, 1, 1, S) attention bias:
    0 for real keys, the dtype's lowest value for padded ones. Not -inf: a row of padding only
    then attends uniformly instead of turning into NaN, as in Hugging Face's BERT.

    >>> padding_bias(torch.tensor([[1, 1, 0]]), torch.float16)
    tensor([[[[     0.,      0., -65504.]]]], dtype=torch.float16)
    """
    hidden = attention_mask[:, None, None, :] == 0       # (B, 1, 1, S): same mask for every query
    return torch.zeros(hidden.shape, dtype=dtype, device=attention_mask.device).masked_fill(
        hidden, torch.finfo(dtype).min)


@dataclass
class EncoderOutput:
    """What `Encoder.encode` returns."""

    last_hidden_state: torch.Tensor                    # (B, T, n_embd): what the heads read
    hidden_states: tuple[torch.Tensor, ...] | None     # n_layer + 1 of (B, T, n_embd), or None
    pooled: torch.Tensor | None                        # (B, n_embd) if the config has a pooler


class EncoderBlock(nn.Module):
    """One bidirectional block, post-norm (BERT: x = ln_1(x + attn(x)), then ln_2(x + mlp(x)))
    or pre-norm (x + attn(ln_1(x)), then x + mlp(ln_2(x)))."""

    def __init__(self, config: EncoderConfig, layer_idx: int) -> None:
        super().__init__()
        self.post_norm = config.norm_position == "post"
        self.attn = CausalSelfAttention(config, layer_idx, causal=False)
        self.ln_1 = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.mlp = MLPS[config.mlp](config.n_embd, config.hidden_size, bias=config.bias, dropout=config.dropout)
        self.ln_2 = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)

    def extra_repr(self) -> str:
        return "post-norm" if self.post_norm else "pre-norm"

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, C) -> (B, T, C); `bias` masks padded keys (and carries ALiBi)."""
        if self.post_norm:
            x = self.ln_1(x + self.attn(x, rope, bias))
            return self.ln_2(x + self.mlp(x))
        x = x + self.attn(self.ln_1(x), rope, bias)
        return x + self.mlp(self.ln_2(x))


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense -> the MLP's activation -> norm, then the decoder (tied to wte) + bias."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.act = ACTIVATIONS[mlp_activation(config.mlp)]
        self.norm = NORMS[config.norm](config.n_embd, eps=config.norm_eps, bias=config.bias)
        self.decoder = nn.Linear(config.n_embd, config.vocab_size, bias=config.bias)

    def forward(self, out: EncoderOutput) -> torch.Tensor:
        return self.logits(out.last_hidden_state)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Vocabulary logits (..., vocab_size) for hidden states (..., n_embd): training may pass
        only the masked positions (N, n_embd) and skip the decoder everywhere else."""
        return self.decoder(self.norm(self.act(self.transform(h))))


class ClassificationHead(nn.Module):
    """Sequence classification: dropout, then a linear layer on the pooled vector."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.n_embd, config.num_labels, bias=config.bias)

    def forward(self, out: EncoderOutput) -> torch.Tensor:
        return self.classifier(self.dropout(out.pooled))  # (B, num_labels)


class NoHead(nn.Module):
    """No head: the last hidden state itself (what embedding models pool)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()

    def forward(self, out: EncoderOutput) -> torch.Tensor:
        return out.last_hidden_state  # (B, T, n_embd)


HEADS = {"mlm": MaskedLMHead, "classification": ClassificationHead, "none": NoHead}


class Encoder(nn.Module):
    """Bidirectional transformer: ids (B, T) -> the head's output (see the module docstring)."""

    config_class = EncoderConfig

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = c = config if config is not None else EncoderConfig()
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wtt = nn.Embedding(c.type_vocab_size, c.n_embd) if c.type_vocab_size else None
        self.position = POSITIONS[c.position](c)
        self.ln_emb = NORMS[c.norm](c.n_embd, eps=c.norm_eps, bias=c.bias) if c.embedding_norm else nn.Identity()
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(EncoderBlock(c, i) for i in range(c.n_layer))
        # Pre-norm leaves the residual stream unnormalized: one last norm, as in the GPT.
        pre = c.norm_position == "pre"
        self.ln_f = NORMS[c.norm](c.n_embd, eps=c.norm_eps, bias=c.bias) if pre else nn.Identity()
        self.pooler = nn.Linear(c.n_embd, c.n_embd, bias=c.bias) if c.pooler else None
        self.head = HEADS[c.head](c)
        self.init_weights()
        if c.head == "mlm" and c.tie_embeddings:
            self.head.decoder.weight = self.wte.weight  # Press & Wolf 2017, as BERT does

    def init_weights(self) -> None:
        """Every initialization in one place: Linear and Embedding weights N(0, init_std) (BERT's
        and GPT-2's), biases 0, norms 1 (their default); pre-norm only: the projections that write
        into the residual stream (`o_proj`, `down_proj`) at init_std/sqrt(2·n_layer), GPT-2's
        depth scaling (post-norm renormalizes the stream at every block, so BERT does not)."""
        c = self.config
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=c.init_std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        if c.norm_position == "pre":
            for block in self.layers:
                nn.init.normal_(block.attn.o_proj.weight, std=c.init_std / math.sqrt(2 * c.n_layer))
                nn.init.normal_(block.mlp.down_proj.weight, std=c.init_std / math.sqrt(2 * c.n_layer))

    def forward(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The head's output for ids (B, T): MLM logits (B, T, vocab_size), class logits
        (B, num_labels) or the last hidden state (B, T, n_embd). Arguments as in `encode`."""
        return self.head(self.encode(idx, attention_mask, token_type_ids, position_ids))

    def encode(self, idx: torch.Tensor, attention_mask: torch.Tensor | None = None,
               token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
               output_hidden_states: bool = False) -> EncoderOutput:
        """Hidden states for ids (B, T). `attention_mask` (B, T): 1 for real tokens, 0 for padding
        (Hugging Face's convention; None = no padding); `token_type_ids` (B, T): each token's
        segment (None = all 0); `position_ids` (B, T) or (T,) (None = 0..T-1).
        `output_hidden_states`: also the embeddings' output and every block's (n_layer + 1; with
        pre-norm the last is after `ln_f`, as Hugging Face reports it)."""
        _, T = check_idx(idx)
        self._check_inputs(idx, attention_mask, token_type_ids, position_ids)
        pos = position_ids if position_ids is not None else torch.arange(T, device=idx.device)
        x = self.wte(idx)                                  # (B, T, C)
        if self.wtt is not None:
            types = token_type_ids if token_type_ids is not None else torch.zeros_like(idx)
            x = x + self.wtt(types)
        x = self.drop(self.ln_emb(self.position.embed(x, pos)))
        rope = self.position.rotary(pos)                   # computed once, used by every layer
        bias = self.attention_bias(pos, attention_mask, x.dtype)
        states = [x] if output_hidden_states else None
        for block in self.layers:
            x = block(x, rope, bias)
            if states is not None:
                states.append(x)
        x = self.ln_f(x)
        if states is not None:
            states[-1] = x
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, C)
        return EncoderOutput(x, tuple(states) if states is not None else None, pooled)

    def attention_bias(self, pos: torch.Tensor, attention_mask: torch.Tensor | None,
                       dtype: torch.dtype) -> torch.Tensor | None:
        """Additive bias for every layer: padded keys hidden, plus symmetric ALiBi; None = none."""
        alibi = self.position.attn_bias(pos, pos, causal=False)  # (H, T, T), (B, H, T, T) or None
        bias = padding_bias(attention_mask, dtype) if attention_mask is not None else None
        if alibi is None:
            return bias
        alibi = alibi.to(dtype)
        return alibi if bias is None else bias + alibi

    def _check_inputs(self, idx: torch.Tensor, attention_mask: torch.Tensor | None,
                      token_type_ids: torch.Tensor | None, position_ids: torch.Tensor | None) -> None:
        """ConfigError for inputs the encoder cannot read: too long, wrong shapes, token types
        without a token-type table."""
        B, T = idx.shape
        limit = self.config.block_size
        if T > limit:
            raise ConfigError(f"input of {T} tokens is longer than the encoder's {limit} positions "
                              "(block_size; max_position_embeddings in a Hugging Face config): "
                              f"truncate it to {limit} tokens (ask the tokenizer for truncation) "
                              "or split the text")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and tuple(t.shape) != (B, T):
                raise ConfigError(f"{name} must have the ids' shape {(B, T)}, got {tuple(t.shape)}")
        if position_ids is not None:
            if tuple(position_ids.shape) not in ((B, T), (T,)):
                raise ConfigError(f"position_ids must be (batch, time) {(B, T)} or (time,), "
                                  f"got {tuple(position_ids.shape)}")
            if int(position_ids.max()) >= limit:
                raise ConfigError(f"position_ids reach {int(position_ids.max())}, past the encoder's "
                                  f"{limit} positions (0..{limit - 1})")
        if token_type_ids is not None and self.wtt is None:
            raise ConfigError("token_type_ids given, but this encoder has no token-type embeddings "
                              "(type_vocab_size 0); leave them out")

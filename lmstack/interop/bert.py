"""Hugging Face BERT <-> our `Encoder` (lmstack/models/encoder.py): config, weights, directories.

    lmstack convert --src ~/models/all-MiniLM-L6-v2 --dst runs/minilm     # HF BERT -> lmstack
    lmstack convert --src runs/bert --dst runs/bert-hf --to hf             # lmstack -> HF BERT
    lmstack ... --model ~/models/all-MiniLM-L6-v2                          # on the fly

Imported (`model_type: "bert"`): `BertModel` (head "none"; the pooler if its weights are there),
`BertForMaskedLM` and `BertForPreTraining` (head "mlm"; the next-sentence head of the latter is
dropped: nothing here reads it), `BertForSequenceClassification` (head "classification",
num_labels from id2label). Read: vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
intermediate_size, hidden_act ("gelu" is the exact erf GELU, "gelu_new"/"gelu_pytorch_tanh" the
tanh one, "relu"), max_position_embeddings (block_size), type_vocab_size, layer_norm_eps,
tie_word_embeddings. Refused, naming the field: position_embedding_type other than "absolute"
(relative_key, relative_key_query), is_decoder, add_cross_attention, another hidden_act, another
architecture. Ignored (no effect on the outputs): dropouts, initializer_range, pad_token_id,
chunk_size_feed_forward, use_cache, gradient_checkpointing. Dropout is 0 after import, as for
the GPT families (hf.py); set it in config.json to fine-tune with it.

Weights stream tensor by tensor onto a model built on the `meta` device (as weights.py does for
the GPT). Names: an optional `bert.` prefix is dropped, TF-era `LayerNorm.gamma/beta` read as
weight/bias, and the `position_ids`/`token_type_ids` buffers some files carry are skipped.
Export writes what `transformers.AutoModel*.from_pretrained` loads with equal outputs: only a
post-norm, LayerNorm, learned-position, biased, full-head encoder is a BERT (`bert_config`
says which field is not). Tokenizer files (tokenizer.json, vocab.txt, tokenizer_config.json,
special_tokens_map.json) are copied as they are, both ways: a WordPiece tokenizer is the same
file on either side (lmstack/tokenizer/ reads it).

    >>> cfg = encoder_config({"model_type": "bert", "vocab_size": 99, "hidden_size": 32,
    ...     "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37,
    ...     "architectures": ["BertForMaskedLM"]})
    >>> cfg.head, cfg.mlp, cfg.block_size, cfg.norm_eps, cfg.pooler
    ('mlm', 'gelu_exact', 512, 1e-12, False)
    >>> bert_name("bert.encoder.layer.3.attention.output.LayerNorm.gamma")
    'encoder.layer.3.attention.output.LayerNorm.weight'
    >>> encoder_config({"model_type": "bert", "position_embedding_type": "relative_key"})
    Traceback (most recent call last):
    ...
    lmstack.errors.ConfigError: config.json: position_embedding_type='relative_key' is not supported (only absolute (learned) positions are modelled); lmstack imports BERT without it

Run the tests: `pytest lmstack/interop/bert.py tests/interop/test_bert.py`.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from lmstack.atomic import atomic_open, atomic_write_json
from lmstack.errors import ConfigError
from lmstack.interop.weights import hf_tensors, read_json, safetensors_files
from lmstack.models.directory import load_model, save_model
from lmstack.models.encoder import Encoder, EncoderConfig

BERT_TYPES = ("bert",)  # config.json model_type values this module imports
ARCHITECTURES = {"BertModel": "none", "BertForMaskedLM": "mlm", "BertForPreTraining": "mlm",
                 "BertForSequenceClassification": "classification"}  # -> our head
EXPORTED = {"none": "BertModel", "mlm": "BertForMaskedLM", "classification": "BertForSequenceClassification"}
ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "relu": "relu"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")

LAYER = "encoder.layer.{i}."
NAMES = [  # (HF name without the "bert." prefix, ours); {i} is the layer, {w} weight or bias
    ("embeddings.word_embeddings.weight", "wte.weight"),
    ("embeddings.position_embeddings.weight", "position.wpe.weight"),
    ("embeddings.token_type_embeddings.weight", "wtt.weight"),
    ("embeddings.LayerNorm.{w}", "ln_emb.{w}"),
    *[(LAYER + f"attention.self.{hf}.{{w}}", f"layers.{{i}}.attn.{ours}.{{w}}")
      for hf, ours in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj"))],
    (LAYER + "attention.output.dense.{w}", "layers.{i}.attn.o_proj.{w}"),
    (LAYER + "attention.output.LayerNorm.{w}", "layers.{i}.ln_1.{w}"),
    (LAYER + "intermediate.dense.{w}", "layers.{i}.mlp.up_proj.{w}"),
    (LAYER + "output.dense.{w}", "layers.{i}.mlp.down_proj.{w}"),
    (LAYER + "output.LayerNorm.{w}", "layers.{i}.ln_2.{w}"),
    ("pooler.dense.{w}", "pooler.{w}"),
    ("cls.predictions.transform.dense.{w}", "head.transform.{w}"),
    ("cls.predictions.transform.LayerNorm.{w}", "head.norm.{w}"),
    ("cls.predictions.decoder.weight", "head.decoder.weight"),
    ("cls.predictions.decoder.bias", "head.decoder.bias"),  # the bias the decoder adds...
    ("cls.predictions.bias", "head.decoder.bias"),  # ...the same tensor unless the head is untied
    ("classifier.{w}", "head.classifier.{w}"),
]
# Saved by some versions, and not ours to keep: buffers transformers rebuilds, the next-sentence head.
SKIP = re.compile(r"(embeddings\.(position_ids|token_type_ids)|cls\.seq_relationship\.(weight|bias))$")
# With tie_word_embeddings false transformers unties the two output biases too, and the decoder
# adds its own: cls.predictions.decoder.bias wins over cls.predictions.bias when a file has both.
SECOND_BIAS = "cls.predictions.bias"


def _regex(pattern: str) -> re.Pattern:
    escaped = re.escape(pattern).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{w\}", r"(?P<w>weight|bias)")
    return re.compile(escaped + "$")


NAMES_RE = [(_regex(hf), ours) for hf, ours in NAMES]


def _refuse(source: str, field: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{source}: {field}={value!r} is not supported ({why}); lmstack imports "
                       "BERT without it")


def is_bert_config(d: dict) -> bool:
    """Whether a config.json dict is a Hugging Face BERT one (ours says model_type "encoder")."""
    return d.get("model_type") in BERT_TYPES


def is_encoder_dir(directory: str | os.PathLike) -> bool:
    """Whether a directory holds an encoder: a Hugging Face BERT or our own (model_type "encoder")."""
    path = Path(directory) / "config.json"
    return path.is_file() and read_json(path).get("model_type") in (*BERT_TYPES, "encoder")


def bert_name(name: str) -> str:
    """An HF BERT tensor name as NAMES spells it: no `bert.` prefix, `gamma`/`beta` (TF-era
    checkpoints) as `weight`/`bias`."""
    name = name.removeprefix("bert.")
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def encoder_config(d: dict, source: str = "config.json", tensor_names: Iterable[str] = ()) -> EncoderConfig:
    """Our `EncoderConfig` for a Hugging Face BERT config dict (`tensor_names`, the checkpoint's,
    say whether it has a pooler); `ConfigError` naming any field we do not model."""
    if not is_bert_config(d):
        raise ConfigError(f"{source}: model_type {d.get('model_type')!r} is not BERT")
    kind = d.get("position_embedding_type", "absolute")
    if kind != "absolute":
        raise _refuse(source, "position_embedding_type", kind, "only absolute (learned) positions are modelled")
    for flag in ("is_decoder", "add_cross_attention"):
        if d.get(flag):
            raise _refuse(source, flag, d[flag], "the encoder is bidirectional and has no cross-attention")
    act = d.get("hidden_act", "gelu")
    if act not in ACTIVATIONS:
        raise _refuse(source, "hidden_act", act, f"known: {sorted(ACTIVATIONS)}")
    head = head_of(d, source, tensor_names)
    pooler = any(bert_name(n).startswith("pooler.") for n in tensor_names) or head == "classification"
    labels = d.get("id2label")
    return EncoderConfig(
        vocab_size=d.get("vocab_size", 30522), block_size=d.get("max_position_embeddings", 512),
        type_vocab_size=d.get("type_vocab_size", 2), n_layer=d.get("num_hidden_layers", 12),
        n_head=d.get("num_attention_heads", 12), n_embd=d.get("hidden_size", 768),
        position="learned", norm="layernorm", norm_eps=d.get("layer_norm_eps", 1e-12),
        norm_position="post", embedding_norm=True, mlp=ACTIVATIONS[act],
        intermediate_size=d.get("intermediate_size", 3072), dropout=0.0, bias=True,
        pooler=pooler, head=head, num_labels=len(labels) if labels else d.get("num_labels", 2),
        tie_embeddings=d.get("tie_word_embeddings", True))


def head_of(d: dict, source: str, tensor_names: Iterable[str] = ()) -> str:
    """Our head for the config's architecture; without `architectures`, "mlm" if the weights
    hold an MLM head, else "none"."""
    archs = d.get("architectures") or []
    if not archs:
        return "mlm" if any(bert_name(n).startswith("cls.predictions.") for n in tensor_names) else "none"
    if archs[0] not in ARCHITECTURES:
        raise _refuse(source, "architectures", archs, f"importable: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[archs[0]]


def to_encoder_name(name: str) -> str | None:
    """Our parameter name for an HF BERT tensor name, None for one we skip; `ConfigError` for a
    name BERT does not have."""
    name = bert_name(name)
    if SKIP.search(name):
        return None
    for rx, ours in NAMES_RE:
        m = rx.match(name)
        if m:
            return ours.format(**m.groupdict())
    raise ConfigError(f"unexpected tensor {name!r} in a BERT checkpoint; it does not belong to "
                      "the architectures config.json names")


def load_bert(directory: str | os.PathLike, hf_config: dict | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> Encoder:
    """Our `Encoder` with the weights of a local Hugging Face BERT directory (eval mode)."""
    d = Path(directory)
    hf_config = hf_config if hf_config is not None else read_json(d / "config.json")
    cfg = encoder_config(hf_config, str(d / "config.json"), _tensor_names(d))
    with torch.device("meta"):
        model = Encoder(cfg)  # shapes only: no memory until the real tensors arrive
    expected = model.state_dict()
    tied = cfg.head == "mlm" and cfg.tie_embeddings
    if tied:  # one matrix with wte, tied again after loading
        expected.pop("head.decoder.weight")
    loaded: dict[str, torch.Tensor] = {}
    for name, tensor in hf_tensors(d):
        ours = to_encoder_name(name)
        if ours is None or (tied and ours == "head.decoder.weight"):
            continue
        if bert_name(name) == SECOND_BIAS and ours in loaded:
            continue  # the decoder's own bias came first
        if ours not in expected:
            raise ConfigError(f"{d}: tensor {name!r} ({ours}) is not in the model config.json "
                              f"describes (architectures {hf_config.get('architectures')})")
        if tuple(tensor.shape) != tuple(expected[ours].shape):
            raise ConfigError(f"{d}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json "
                              f"implies {tuple(expected[ours].shape)}")
        loaded[ours] = tensor.to(device=device, dtype=dtype).contiguous()
    if missing := sorted(set(expected) - set(loaded)):
        raise ConfigError(f"{d}: the checkpoint lacks {len(missing)} tensors config.json needs, "
                          f"e.g. {missing[:4]}; it is incomplete or for another architecture")
    model.load_state_dict(loaded, strict=False, assign=True)
    if tied:
        model.head.decoder.weight = model.wte.weight
    return model.eval()


def _tensor_names(d: Path) -> list[str]:
    """Every tensor name of the checkpoint, read from the safetensors headers only."""
    names: list[str] = []
    for path in safetensors_files(d):
        try:
            with safe_open(str(path), framework="pt") as f:
                names.extend(f.keys())
        except (SafetensorError, OSError) as e:
            raise ConfigError(f"{path} cannot be read as safetensors ({e}); the file is corrupt "
                              "or truncated") from None
    return names


# ---- export ---------------------------------------------------------------------------------


def bert_config(cfg: EncoderConfig) -> dict:
    """The Hugging Face BERT config dict for an encoder that is a BERT; `ConfigError` naming the
    first field that makes it something else."""
    wanted = {"position": "learned", "norm": "layernorm", "norm_position": "post",
              "embedding_norm": True, "bias": True, "n_kv_head": (None, cfg.n_head),
              "qkv_bias": (None, True), "qk_norm": False, "rope_scaling": None}
    for field, ok in wanted.items():
        value = getattr(cfg, field)
        if value not in (ok if isinstance(ok, tuple) else (ok,)):
            raise ConfigError(f"this encoder does not map onto Hugging Face BERT: {field}={value!r} "
                              f"(BERT needs {ok!r}); export only BERT-shaped encoders")
    act = {ours: hf for hf, ours in ACTIVATIONS.items() if hf != "gelu_pytorch_tanh"}.get(cfg.mlp)
    if act is None:
        raise ConfigError(f"this encoder does not map onto Hugging Face BERT: mlp={cfg.mlp!r} "
                          f"(BERT's MLP is one of {sorted(set(ACTIVATIONS.values()))})")
    out = {"architectures": [EXPORTED[cfg.head]], "model_type": "bert", "vocab_size": cfg.vocab_size,
           "hidden_size": cfg.n_embd, "num_hidden_layers": cfg.n_layer,
           "num_attention_heads": cfg.n_head, "intermediate_size": cfg.hidden_size,
           "hidden_act": act, "max_position_embeddings": cfg.block_size,
           # no token types: one all-zero type, which adds nothing (bert_tensors)
           "type_vocab_size": max(cfg.type_vocab_size, 1), "layer_norm_eps": cfg.norm_eps,
           "position_embedding_type": "absolute", "tie_word_embeddings": cfg.tie_embeddings,
           "hidden_dropout_prob": cfg.dropout, "attention_probs_dropout_prob": cfg.dropout,
           "is_decoder": False, "add_cross_attention": False, "torch_dtype": "float32"}
    if cfg.head == "classification":
        out["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        out["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return out


def bert_tensors(model: Encoder) -> dict[str, torch.Tensor]:
    """HF-named float32 tensors of an encoder (`bert.` prefixed under a head, as transformers
    saves them; a tied decoder weight left out, as transformers ties it again)."""
    cfg = model.config
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    if cfg.type_vocab_size == 0:
        state["wtt.weight"] = torch.zeros(1, cfg.n_embd)
    if cfg.head == "mlm" and cfg.tie_embeddings:
        state.pop("head.decoder.weight", None)
    prefix = "" if cfg.head == "none" else "bert."
    out: dict[str, torch.Tensor] = {}
    for hf, ours in NAMES:
        for i in range(cfg.n_layer) if "{i}" in hf else [None]:
            for w in ("weight", "bias") if "{w}" in hf else [None]:
                key = ours.format(i=i, w=w)
                name = hf.format(i=i, w=w)
                if key not in state or (name == "cls.predictions.decoder.bias" and cfg.tie_embeddings):
                    continue  # tied: transformers makes the decoder's bias cls.predictions.bias
                top = name.startswith(("cls.", "classifier."))
                out[name if top else prefix + name] = state[key].clone()  # own storage each
    return out


def export_bert(model: Encoder, out: str | os.PathLike, extra_from: str | os.PathLike | None = None) -> Path:
    """Write a Hugging Face BERT directory (config.json, model.safetensors, and the tokenizer
    files of `extra_from`) that transformers loads with the same outputs."""
    hf_config = bert_config(model.config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "model.safetensors") as f:
        save_file(bert_tensors(model), f.name, metadata={"format": "pt"})
    atomic_write_json(out / "config.json", hf_config)
    if extra_from is not None:
        copy_tokenizer_files(extra_from, out)
    return out


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy the tokenizer files a BERT directory may hold, unchanged."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            with atomic_open(Path(dst) / name) as f:
                shutil.copyfile(Path(src) / name, f.name)


def convert_bert(src: str | os.PathLike, dst: str | os.PathLike, to: str) -> Path:
    """`lmstack convert` for encoders: an HF BERT directory to ours (`to="lmstack"`), or our
    encoder directory to an HF BERT one (`to="hf"`); tokenizer files copied."""
    if to not in ("lmstack", "hf"):
        raise ConfigError(f"--to must be 'lmstack' or 'hf' for an encoder, got {to!r}")
    if to == "lmstack":
        if not is_bert_config(read_json(Path(src) / "config.json")):
            raise ConfigError(f"{src} is already an lmstack encoder directory; convert it --to hf")
        save_model(dst, load_bert(src))
        copy_tokenizer_files(src, dst)
        return Path(dst)
    model = load_model(src)
    if not isinstance(model, Encoder):
        raise ConfigError(f"{src} holds a {type(model).__name__}, not an encoder")
    return export_bert(model, dst, extra_from=src)

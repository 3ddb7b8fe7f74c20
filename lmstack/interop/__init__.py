"""Interop with Hugging Face and GGUF: import GPT-2 / Llama / Mistral / Qwen2 / BERT checkpoints
and GGUF files (llama, mistral, qwen2), export ours to Hugging Face.

    from lmstack.interop import load_hf_model, export_hf, convert, load_gguf_model, read_gguf
    from lmstack.interop import load_bert, export_bert
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "bert": ["export_bert", "load_bert"],
    "hf": ["chat_template", "convert", "eos_token_ids", "export_hf", "is_hf_dir", "load_hf_model"],
    "gguf_file": ["GGUFFile", "is_gguf", "read_gguf"],
    "gguf_dequant": ["dequantize"],
    "gguf_model": ["convert_gguf", "gguf_eos_ids", "load_gguf_model"],
})

"""Interop with Hugging Face: import GPT-2 / Llama / Mistral / Qwen2 checkpoints, export ours.

    from lmstack.interop import load_hf_model, export_hf, convert
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "hf": ["chat_template", "convert", "eos_token_ids", "export_hf", "is_hf_dir", "load_hf_model"],
})

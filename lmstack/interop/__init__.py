"""Interop with Hugging Face: import GPT-2 / Llama / Mistral / Qwen2 checkpoints, export ours.

    from lmstack.interop import load_hf_model, export_hf, convert
"""

from lmstack.interop.hf import chat_template, convert, eos_token_ids, export_hf, is_hf_dir, load_hf_model

__all__ = ["chat_template", "convert", "eos_token_ids", "export_hf", "is_hf_dir", "load_hf_model"]

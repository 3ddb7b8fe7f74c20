"""Parameter-efficient fine-tuning: LoRA (lora.py) and its adapters in Hugging Face PEFT's
directory format (adapter.py). Guide: docs/peft.md.

    from lmstack.posttrain.peft import LoraConfig, apply_lora, merge_lora, save_adapter, load_adapter
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "lora": ["LoraConfig", "LoraLinear", "apply_lora", "lora_layers", "lora_parameters",
             "lora_state_dict", "lora_summary", "merge_lora", "unload_lora", "unmerge_lora"],
    "adapter": ["load_adapter", "save_adapter"],
})

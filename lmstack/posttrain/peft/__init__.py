"""Parameter-efficient fine-tuning: LoRA (lora.py) and its adapters in Hugging Face PEFT's
directory format (adapter.py); QLoRA, LoRA on a frozen 4-bit base (qlora.py, nf4.py); prompt
tuning (prompt_tuning.py); bottleneck adapters (houlsby.py); one save/load entry for all
(registry.py) and parameter/memory counts (summary.py). Guide: docs/peft.md.

    from lmstack.posttrain.peft import LoraConfig, apply_lora, merge_lora, save_peft, load_peft
"""

from __future__ import annotations

from lmstack import lazy_exports

# Module -> the public names it defines, each imported on first use.
__all__, __getattr__, __dir__ = lazy_exports(__name__, {
    "lora": ["LoraConfig", "LoraLinear", "apply_lora", "lora_layers", "lora_parameters",
             "lora_state_dict", "lora_summary", "merge_lora", "unload_lora", "unmerge_lora"],
    "adapter": ["load_adapter", "save_adapter"],
    "qlora": ["Int4BaseLinear", "NF4Linear", "QLoraLinear", "QuantConfig", "apply_qlora", "quantize_base"],
    "prompt_tuning": ["PromptTuningConfig", "PromptTuningModel", "apply_prompt_tuning",
                      "load_prompt_tuning", "save_prompt_tuning"],
    "houlsby": ["HoulsbyConfig", "HoulsbyLinear", "apply_houlsby", "houlsby_layers", "houlsby_parameters",
                "load_houlsby", "save_houlsby"],
    "registry": ["PEFT_METHODS", "PeftMethod", "apply_peft", "load_peft", "peft_method", "peft_parameters",
                 "save_peft"],
    "summary": ["TrainableSummary", "trainable_summary", "weight_bytes"],
})

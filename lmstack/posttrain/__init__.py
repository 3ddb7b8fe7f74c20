"""Post-training (layer 6): supervised fine-tuning, parameter-efficient fine-tuning, preference and RL training."""

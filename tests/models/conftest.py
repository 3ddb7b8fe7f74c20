"""Model tests run tiny tensors: one intra-op thread is ~20x faster than two on a shared 2-core
machine (thread wake-ups dominate), and pytest-xdist already uses the cores."""

import torch

torch.set_num_threads(1)

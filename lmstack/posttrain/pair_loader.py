"""The preference pairs of a run (`lmstack reward`, `lmstack dpo`), and the loader that deals them.

`load_pair_data` reads the JSONL pairs (preference.py: each line checked, errors naming the
file and line), holds out a seeded `val_fraction` (or reads `val_data`), and cuts each side to
the row length (`truncate_pairs`: a pair whose reply is cut away, or whose two sides become
equal, is dropped and counted). `PairLoader` is sft.py's SFTLoader dealing pairs instead of
packed rows: the same seeded order per epoch, the same split across ranks, the same resumable
state; its batches are `collate_pairs`' (input_ids (2B, T), labels (2B, T), lengths (2B,)),
chosen rows first, padded to the batch's longest sequence.

    data = load_pair_data(cfg, tok)
    loader = PairLoader(data.train, batch_size=8, max_len=data.row_len, seed=0)
    input_ids, labels, lengths = loader.next_batch()

Run the tests: `pytest lmstack/posttrain/pair_loader.py --doctest-modules tests/posttrain/test_reward_run.py`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lmstack.errors import DataError
from lmstack.models.directory import model_chat_template
from lmstack.posttrain.preference import (
    PairTruncation,
    PreferencePair,
    collate_pairs,
    load_preference_pairs,
    truncate_pairs,
)
from lmstack.posttrain.sft import SFTLoader
from lmstack.posttrain.sft_config import SFTConfig
from lmstack.posttrain.sft_run import hold_out, row_length
from lmstack.tokenizer import Tokenizer


class PairLoader(SFTLoader):
    """Preference pairs in a seeded order per epoch, dealt to ranks, resumable from its state.

    >>> from lmstack.posttrain.sft_data import Example
    >>> pairs = [PreferencePair(Example([1, i], [0, 1]), Example([1, i + 9], [0, 1])) for i in range(5)]
    >>> a = PairLoader(pairs, batch_size=2, max_len=2, seed=1)
    >>> _ = a.next_batch(); state = a.state_dict(); ids, labels, lengths = a.next_batch()
    >>> ids.shape, labels.shape, lengths.tolist()  # 2 pairs: 2 chosen rows, then 2 rejected
    (torch.Size([4, 2]), torch.Size([4, 2]), [2, 2, 2, 2])
    >>> b = PairLoader(pairs, batch_size=2, max_len=2, seed=1); b.load_state_dict(state)
    >>> bool((b.next_batch()[0] == ids).all())
    True
    """

    what = "preference pairs"

    def collate(self, items: list) -> tuple[torch.Tensor, ...]:
        """(input_ids, labels, lengths) of B pairs: (2B, T), (2B, T), (2B,), chosen rows first."""
        return collate_pairs(items, self.pad_id)


@dataclass
class PairData:
    """The pairs a run trains and validates on, and what truncation did to them."""

    train: list[PreferencePair]
    val: list[PreferencePair]
    report: PairTruncation
    row_len: int  # the most tokens a side may have

    def describe(self) -> str:
        """One line for the run's start."""
        return (f"data: {len(self.train)} training pairs, {len(self.val)} held out, sides of at "
                f"most {self.row_len} tokens; {self.report}")


def load_pair_data(cfg: SFTConfig, tok: Tokenizer) -> PairData:
    """Read, hold out and truncate cfg.data's pairs (rendered with the base's chat template)."""
    template = model_chat_template(cfg.base_model)
    pairs = load_preference_pairs(cfg.data, tok, template)
    if cfg.val_data is not None:
        held = load_preference_pairs(cfg.val_data, tok, template)
    else:
        pairs, held = hold_out(pairs, cfg)
    length, _ = row_length(cfg)  # prompt tuning keeps room for its virtual tokens
    train, report = truncate_pairs(pairs, length)
    val, _ = truncate_pairs(held, length)
    if not train:
        raise DataError(f"{cfg.data}: no preference pair is left to train on ({report}); raise "
                        f"block_size (now {cfg.block_size}) so the replies fit, lower val_fraction, "
                        "or add pairs")
    return PairData(train, val, report, length)

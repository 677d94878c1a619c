"""Right-padding of token id sequences into a batch, shared by pretraining and the spelling data."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (input_ids, attention_mask) of shape (batch, longest), padded on the right with pad_id."""
    length = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask

"""Names in official EmbedMask checkpoints (yinghdb/AdelaiDet) that differ from this model's, in one table.

Our modules use the official names, so the table only drops what has no counterpart here.
"""

from __future__ import annotations

import re

import torch

# (regular expression on the official name, our name or None to drop the entry)
OFFICIAL_NAME_TABLE: list[tuple[str, str | None]] = [
    # The official MaskPred module keeps an unused iteration counter and a copy of FCOS's sizes of interest.
    (r"^mask_pred\.(sizes_of_interest|_iter)$", None),
]


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename (or drop) official entries per :data:`OFFICIAL_NAME_TABLE`; strip a DDP ``module.`` prefix."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    converted = {}
    for name, value in state_dict.items():
        for pattern, replacement in OFFICIAL_NAME_TABLE:
            if re.search(pattern, name):
                name = None if replacement is None else re.sub(pattern, replacement, name)
                break
        if name is not None:
            converted[name] = value
    return converted

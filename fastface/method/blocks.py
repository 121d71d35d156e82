"""Which UNet part ('down', 'mid', 'up') an attn2 layer belongs to, from any host's block naming.

AM is applied per part: the authors patch attn2 layers whose diffusers name contains "down" or
"up" and leave the mid block alone. The hosts name the same blocks differently:

    diffusers   down_blocks.*        mid_block            up_blocks.*
    ldm / sgm   input_blocks.*       middle_block         output_blocks.*      (A1111, Forge Gen1)
    Forge       ("input", id[, i])   ("middle", 0[, i])   ("output", id[, i])  (patches_replace keys)
    ControlNet  TransformerID.block_type INPUT / MIDDLE / OUTPUT                 (sd-webui-controlnet)
"""
from __future__ import annotations

from typing import Optional

_PART_BY_WORD = {
    "input": "down", "input_blocks": "down", "down": "down", "down_blocks": "down",
    "middle": "mid", "middle_block": "mid", "mid": "mid", "mid_block": "mid",
    "output": "up", "output_blocks": "up", "up": "up", "up_blocks": "up",
}


def unet_part(block: object) -> Optional[str]:
    """'down' / 'mid' / 'up' for a block name, module path, key tuple or enum; None if unknown."""
    if isinstance(block, (tuple, list)) and block:
        block = block[0]
    name = getattr(block, "name", block)  # enums (ControlNet's BlockType) carry a .name
    if not isinstance(name, str):
        return None
    for word in name.lower().replace(".", " ").replace("/", " ").split():
        if word in _PART_BY_WORD:
            return _PART_BY_WORD[word]
    return None

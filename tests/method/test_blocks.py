import enum

import pytest

from fastface.method.blocks import unet_part


class BlockType(enum.Enum):  # sd-webui-controlnet scripts/enums.py names its block types so
    INPUT = "input"
    MIDDLE = "middle"
    OUTPUT = "output"


@pytest.mark.parametrize("name,part", [
    ("down_blocks.1.attentions.0.transformer_blocks.1.attn2", "down"),
    ("mid_block.attentions.0.transformer_blocks.0.attn2", "mid"),
    ("up_blocks.0.attentions.2.transformer_blocks.9.attn2", "up"),
    ("input_blocks.4.1.transformer_blocks.0.attn2", "down"),
    ("middle_block.1.transformer_blocks.3.attn2", "mid"),
    ("diffusion_model.output_blocks.5.1.transformer_blocks.1.attn2", "up"),
    (("input", 7, 2), "down"), (("middle", 0), "mid"), (("output", 3), "up"),
    (BlockType.INPUT, "down"), (BlockType.MIDDLE, "mid"), (BlockType.OUTPUT, "up"),
    ("time_embed.0", None), (None, None), ((), None),
])
def test_unet_part(name, part):
    assert unet_part(name) == part

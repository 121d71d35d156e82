"""The face branch's torch path (`method.attention.ip_attention`): equal to SDPA without a transform,
fp32 inside, and the transforms applied to the face probabilities only."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from fastface.method.attention import ip_attention
from fastface.method.transforms import ScalePower, Softmask, adain_blend, softmask, transform_for
from fastface.presets import PRESETS

from face_inputs import qkv, seeds


# --- (a) explicit attention == fused SDPA ----------------------------------------------------
@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("shape", [(3, 10, 64, 64), (2, 20, 16, 64), (1, 8, 4096, 40)])
def test_explicit_attention_matches_sdpa(tokens, shape):
    b, heads, length, d = shape
    q, k, v = qkv(0, b, heads, length, tokens, d)
    ours = ip_attention(q, k, v)
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_are_computed_in_fp32_and_cast_back(dtype):
    q, k, v = qkv(1, dtype=dtype)
    out = ip_attention(q, k, v)
    assert out.dtype == dtype
    exact = F.scaled_dot_product_attention(q.float(), k.float(), v.float())
    torch.testing.assert_close(out.float(), exact, rtol=0, atol=1e-2)


def test_identity_transform_changes_nothing():
    q, k, v = qkv(2)
    torch.testing.assert_close(ip_attention(q, k, v, transform=ScalePower(1.0, 1.0, 10.0)), ip_attention(q, k, v))


def test_transform_sees_only_the_face_probabilities():
    seen = []

    class Spy:
        output_adain = None

        def __call__(self, attn):
            seen.append(attn.clone())
            return attn * 2

    q, k, v = qkv(3, tokens=16)
    out = ip_attention(q, k, v, transform=Spy())
    (attn,) = seen
    assert attn.shape == (3, 2, 16, 16)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 2, 16))  # probabilities over face tokens
    torch.testing.assert_close(out, 2 * ip_attention(q, k, v))  # linear in A


# --- the transforms through ip_attention --------------------------------------------------------
def test_softmask_transform_blends_map_and_output():
    q, k, v = qkv(8)
    t = Softmask(quantile=0.65, d=5.0, s=1.55, adain=0.7)
    attn = torch.matmul(q, k.transpose(-1, -2)).mul(q.shape[-1] ** -0.5).softmax(-1)
    m = adain_blend(softmask(attn, 0.65, 5.0, 1.55), attn, 0.7, dim=-1)
    expected = adain_blend(m @ v, attn @ v, 0.7, dim=-1)
    torch.testing.assert_close(ip_attention(q, k, v, t), expected, rtol=1e-5, atol=1e-5)


@given(seeds, st.sampled_from(["scale-power", "softmask"]), st.sampled_from([4, 16]), st.floats(0.1, 20))
def test_transformed_attention_is_finite(seed, mode, tokens, spread):
    q, k, v = qkv(seed, tokens=tokens)
    args = PRESETS["Realistic"].replace(am_mode=mode)
    for step in (0, 1):
        out = ip_attention(q * spread, k, v, transform_for(args, "down", step, 4))
        assert torch.isfinite(out).all()

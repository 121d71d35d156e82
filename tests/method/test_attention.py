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


# --- the zero-token sink (PuLID) ---------------------------------------------------------------
def _zero_padded(k, v, sink):
    pad = k.new_zeros(k.shape[0], k.shape[1], sink, k.shape[3])
    return torch.cat((k, pad), dim=2), torch.cat((v, pad), dim=2)


@pytest.mark.parametrize("sink", [1, 8, 16])
@pytest.mark.parametrize("transform", [None, ScalePower(1.45, 1.3, 10.0), ScalePower(30.0, 0.7, 5.0)],
                         ids=["none", "scale-power", "scale-power-clamped"])
def test_sink_equals_explicit_zero_padding(sink, transform):
    """sd-webui-controlnet's PuLID pads its 10 id tokens with k = v = 0 tokens: `sink=n` gives the
    padded result (fp32 within 1e-5) without them."""
    q, k, v = qkv(21, b=3, heads=2, length=24, tokens=10, d=16)
    k_pad, v_pad = _zero_padded(k, v, sink)
    expected = F.scaled_dot_product_attention(q, k_pad, v_pad) if transform is None else ip_attention(q, k_pad, v_pad, transform)
    got = ip_attention(q, k, v, transform, sink=sink)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - ip_attention(q, k, v, transform)).abs().max() > 1e-3   # the sink does something


def test_sink_is_safe_for_large_scores():
    """Scores far above 0 or far below it: no overflow, no NaN (the row maximum includes the sink's 0)."""
    q, k, v = qkv(22, b=1, heads=1, length=8, tokens=10, d=16)
    for gain in (200.0, -200.0):
        k_pad, v_pad = _zero_padded(k * gain, v, 8)
        got = ip_attention(q, k * gain, v, ScalePower(1.0, 1.0, 10.0), sink=8)
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k_pad, v_pad), rtol=1e-5, atol=1e-5)


def test_softmask_with_sink_uses_the_real_tokens_only():
    """The softmask's statistics and map AdaIN see the T real tokens, whose probabilities carry the
    sink's share in their denominator: the recorded maps are (B, h, L, 10) and sum to < 1."""
    q, k, v = qkv(23, b=2, heads=2, length=24, tokens=10, d=16)
    seen = []
    ip_attention(q, k, v, Softmask(0.65, 5.0, 1.55, adain=0.7), sink=8, recorder=lambda a, t: seen.append((a, t)))
    attn, mapped = seen[0]
    assert attn.shape == mapped.shape == (2, 2, 24, 10)
    total = attn.sum(-1)
    assert (total < 1).all() and (total > 0).all()
    padded_k, _ = _zero_padded(k, v, 8)
    torch.testing.assert_close(attn, (torch.matmul(q, padded_k.transpose(-1, -2)) * 16 ** -0.5).softmax(-1)[..., :10])
    # the map AdaIN's reference statistics are those of these 10 probabilities (mean measured, not 1/T)
    expected = adain_blend(softmask(attn, 0.65, 5.0, 1.55), attn, 0.7, dim=-1)
    torch.testing.assert_close(mapped, expected, rtol=1e-5, atol=1e-6)

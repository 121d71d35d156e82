"""The fused Triton face branch (fastface/kernels/) against the torch path (method.attention.ip_attention).

The kernels run on the CPU in Triton's interpreter (TRITON_INTERPRET=1, set by a module fixture before
the kernels are built). The interpreter is slow per program, so shapes are small: a few rows and
heads, L = 20 with 16-query blocks (the last block partial), d = 40 (padded to 64, SD1.5-like) or 64.
Tolerances: fp32 1e-5 relative, and 1e-5 absolute in units of the largest output (both paths sum
products of up to clamp_max·|v| per token, so an output near 0 carries the rounding of terms as large
as the largest output: with s = 30, clamp 5, T = 16 the outputs reach 45 and both paths are 2e-5 from an
fp64 evaluation); fp16 2e-3 absolute plus 1e-3 relative, since both paths compute in fp32 and
round to fp16, and a value on a rounding boundary may land one fp16 ulp (≤ 2⁻¹⁰ relative) apart.
"""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st

# Triton fixes a kernel's mode (compiled or interpreted) when it decorates it, its own `tl.max` & co.
# included, so the interpreter must be asked for before triton.language is first imported. The variable
# is set only around that import here (and around this module's tests by the fixture below), so other
# test modules never see it.
_BEFORE = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"
try:
    pytest.importorskip("triton", reason="triton is not installed (the fused face branch is optional)")
    import triton.language  # noqa: E402,F401
    from triton.runtime.interpreter import InterpretedFunction  # noqa: E402
finally:
    if _BEFORE is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = _BEFORE

from fastface.kernels import launch  # noqa: E402
from fastface.kernels.launch import available, face_attention  # noqa: E402
from fastface.method.attention import ip_attention  # noqa: E402
from fastface.method.transforms import ScalePower, Softmask  # noqa: E402

if not isinstance(triton.language.standard.max, InterpretedFunction):
    pytest.skip("triton.language was imported before this module could ask for the interpreter; "
                "run `pytest tests/kernels/test_fused_face.py` on its own", allow_module_level=True)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LENGTH, BLOCK = 20, 16  # two query blocks, the last one partial


@pytest.fixture(scope="module", autouse=True)
def triton_interpreter():
    """Kernels built and run by Triton's CPU interpreter for this module only."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    yield
    if before is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = before


def inputs(seed, rows=3, heads=1, length=LENGTH, tokens=4, d=40, dtype=torch.float32, spreads=(3.0, 1.0, 0.3)):
    """q, k, v with a different logit spread per row, so per-row and pooled min-max norms differ."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.tensor([spreads[r % len(spreads)] for r in range(rows)]).view(rows, 1, 1, 1)
    q = torch.randn(rows, heads, length, d, generator=g) * spread
    k = torch.randn(rows, heads, tokens, d, generator=g)
    v = torch.randn(rows, heads, tokens, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def reference(q, k, v, transform):
    """The torch path; an int softmask period P is given to it as the equivalent ids r % P."""
    if isinstance(transform, Softmask) and isinstance(transform.groups, int):
        ids = torch.arange(q.shape[0]) % transform.groups
        transform = dataclasses.replace(transform, groups=ids)
    return ip_attention(q, k, v, transform)


def assert_matches(got, expected, conditioning=None):
    """fp32: within 1e-5 of the largest output, widened by `conditioning` where the problem itself
    amplifies rounding; fp16 / bf16: one ulp of the output dtype."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype == torch.float32:
        scale = max(1.0, expected.abs().max().item())
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale + 2.0 * (conditioning or 0.0))
    else:
        torch.testing.assert_close(got.float(), expected.float(), rtol=1e-3, atol=2e-3)


def rounding_sensitivity(q, k, v, transform, draws=8):
    """How far the torch path itself moves when q is perturbed by one fp32 rounding (relative noise
    of 2⁻²³): the two paths round differently, so they can differ by about this much. For most
    parameters it is ~1e-7 of the output; for a sharp, clamped softmask (e.g. d = 32 with a clamp at
    the scale) the min-max norms and the sigmoid amplify rounding ~100-fold (3e-5 seen at seed 1),
    which no fixed tolerance bounds on every CPU."""
    g = torch.Generator().manual_seed(12345)
    expected = reference(q, k, v, transform)
    return max((reference(q * (1 + 2.0 ** -23 * torch.randn(q.shape, generator=g)), k, v, transform) - expected)
               .abs().max().item() for _ in range(draws))


SCALE_POWER = ScalePower(s=1.55, p=1.3, clamp_max=10.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("transform", [None, SCALE_POWER, ScalePower(30.0, 0.7, 5.0),  # clamp reached
                                       dataclasses.replace(SCALE_POWER, output_adain=0.7)],
                         ids=["none", "scale-power", "scale-power-clamped", "scale-power-output-adain"])
def test_one_kernel_paths_match_torch(dtype, tokens, transform):
    q, k, v = inputs(1, tokens=tokens, dtype=dtype)
    assert_matches(face_attention(q, k, v, transform, block_l=BLOCK), reference(q, k, v, transform))


SOFTMASKS = {
    "pooled-invert-adain0.7": Softmask(quantile=0.65, d=5.0, s=1.55, invert_first=True, adain=0.7),
    "period2-invert-adain1": Softmask(quantile=0.65, d=7.5, s=1.0, invert_first=True, adain=1.0, groups=2),
    "period2-noinvert-adain0.5": Softmask(quantile=0.3, d=5.0, s=1.55, invert_first=False, adain=0.5, groups=2),
    "period1-noinvert-adain1": Softmask(quantile=0.9, d=10.0, s=2.0, invert_first=False, adain=1.0, groups=1),
    "per-row-clamped": Softmask(quantile=0.65, d=5.0, s=30.0, invert_first=True, clamp_max=8.0, adain=0.7, groups=3),
}
CASES = [("pooled-invert-adain0.7", torch.float32, 4), ("pooled-invert-adain0.7", torch.float16, 16),
         ("period2-invert-adain1", torch.float32, 16), ("period2-invert-adain1", torch.float16, 4),
         ("period2-noinvert-adain0.5", torch.float32, 4), ("period1-noinvert-adain1", torch.float16, 4),
         ("per-row-clamped", torch.float32, 4)]


@pytest.mark.parametrize("name, dtype, tokens", CASES)
def test_softmask_matches_torch(name, dtype, tokens):
    transform = SOFTMASKS[name]
    # T = 16 with 2 rows, T = 4 with 3 rows and 2 heads: the interpreter's time grows with rows·heads·T
    q, k, v = inputs(2, tokens=tokens, dtype=dtype, rows=3 if tokens == 4 else 2, heads=2 if tokens == 4 else 1)
    assert_matches(face_attention(q, k, v, transform, block_l=BLOCK), reference(q, k, v, transform))


def test_groups_change_the_result():
    """The period is not ignored: rows pooled alone differ from rows pooled with the whole call."""
    q, k, v = inputs(3, heads=1)
    pooled = face_attention(q, k, v, Softmask(0.65, 5.0, 1.55), block_l=BLOCK)
    alone = face_attention(q, k, v, Softmask(0.65, 5.0, 1.55, groups=3), block_l=BLOCK)
    assert not torch.allclose(pooled, alone, atol=1e-3)
    assert_matches(alone, reference(q, k, v, Softmask(0.65, 5.0, 1.55, groups=3)))


@pytest.mark.parametrize("ways, stats_block", [(4, 16), (4, None), (16, None), (2, None)])
def test_quantile_search_with_ties(ways, stats_block):
    """The quantile's k-way search (16-way up to 1K queries, 4-way beyond, 2-way for the record), with
    the row in registers (stats_block None) or streamed in chunks (L longer than the statistics block,
    as for L > 4096 on a GPU), on ties: row 0 has zero queries (uniform maps, every value tied: a
    constant pool maps to 0), row 1 saturated maps (many exact 0s and 1s)."""
    q, k, v = inputs(4, rows=3, heads=1, length=LENGTH, spreads=(0.0, 40.0, 1.0))
    transform = Softmask(0.65, 5.0, 1.55, groups=3)
    got = face_attention(q, k, v, transform, block_l=BLOCK, stats_block=stats_block, search_ways=ways)
    assert_matches(got, reference(q, k, v, transform))


def test_bfloat16_and_strided_inputs():
    """bf16 in, and q / v as non-contiguous views (the hosts' (B, L, H, d) → (B, H, L, d) transposes)."""
    q, k, v = inputs(5, rows=2, heads=2, dtype=torch.bfloat16, d=64)
    q_view = q.transpose(1, 2).contiguous().transpose(1, 2)
    v_view = v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_view.is_contiguous()
    for transform in (SCALE_POWER, SOFTMASKS["pooled-invert-adain0.7"]):
        got = face_attention(q_view, k, v_view, transform, block_l=BLOCK)
        assert got.dtype == torch.bfloat16
        # bf16 keeps 8 bits: one bf16 ulp is ≤ 2⁻⁷ relative
        torch.testing.assert_close(got.float(), reference(q, k, v, transform).float(), rtol=8e-3, atol=2e-3)


# |d| ≥ 0.5 (the schedule uses 5 to 7.5) or exactly 0: for 0 < |d| ≪ 1 every sigmoid is 0.5 + O(d) and
# the second min-max norm divides rounding noise by a span of O(d), so any two implementations differ.
D_VALUES = st.one_of(st.just(0.0), st.floats(0.5, 50), st.floats(-50, -0.5))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0, 1), D_VALUES, st.floats(-2, 5), st.floats(0.5, 20),
       st.booleans(), st.sampled_from([0.0, 0.6, 1.0]), st.sampled_from([None, 1, 2]))
def test_softmask_any_parameters(seed, quantile, d, s, clamp, invert, adain, groups):
    """The extremes of the mask are taken at min_L and max_L of the map for any sign of d and s."""
    transform = Softmask(quantile, d, s, invert, clamp, adain, groups)
    q, k, v = inputs(seed, rows=2, heads=1, length=9, tokens=4, d=16, spreads=(3.0, 0.5))
    assert_matches(face_attention(q, k, v, transform, block_l=BLOCK), reference(q, k, v, transform),
                   conditioning=rounding_sensitivity(q, k, v, transform))


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1), st.floats(0, 5), st.floats(0, 5), st.floats(0.5, 20),
       st.sampled_from([None, 0.0, 0.7]), st.sampled_from([1, 4, 16]))
def test_scale_power_any_parameters(seed, s, p, clamp, adain, tokens):
    """Including p = 0 (0⁰ = 1 as in torch), s = 0, T = 1 and an output AdaIN on a scale-power."""
    transform = ScalePower(s, p, clamp, output_adain=adain)
    q, k, v = inputs(seed, rows=2, heads=1, length=9, tokens=tokens, d=16, spreads=(3.0, 30.0))
    assert_matches(face_attention(q, k, v, transform, block_l=BLOCK), reference(q, k, v, transform),
                   conditioning=rounding_sensitivity(q, k, v, transform))


@pytest.mark.parametrize("case", ["tensor groups", "unknown transform", "33 tokens", "mixed dtypes", "needs grad",
                                  "negative sink"])
def test_outside_the_contract_raises_not_implemented(case):
    q, k, v = inputs(6, rows=2, heads=1, length=8)
    transform = SCALE_POWER
    if case == "tensor groups":
        transform = Softmask(0.65, 5.0, 1.55, groups=torch.tensor([0, 1]))
    elif case == "unknown transform":
        class Doubler:
            output_adain = None

            def __call__(self, attn):
                return attn * 2
        transform = Doubler()
    elif case == "33 tokens":
        q, k, v = inputs(6, rows=2, heads=1, length=8, tokens=33)
    elif case == "mixed dtypes":
        k = k.half()
    elif case == "needs grad":
        q.requires_grad_(True)
    with pytest.raises(NotImplementedError):
        face_attention(q, k, v, transform, sink=-1 if case == "negative sink" else 0)


def test_available_needs_cuda_or_the_interpreter():
    assert available("cpu")  # the interpreter is on in this module
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        assert not available("cpu")
        assert available("cuda") == torch.cuda.is_available()
    finally:
        os.environ["TRITON_INTERPRET"] = "1"


def test_module_imports_without_triton():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'triton': raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "from fastface.kernels import launch\n"
        "assert not launch.available('cpu') and not launch.available('cuda')\n"
        "q = torch.zeros(1, 1, 4, 8); k = torch.zeros(1, 1, 4, 8)\n"
        "try:\n"
        "    launch.face_attention(q, k, k)\n"
        "except NotImplementedError:\n"
        "    print('fallback')\n"
    )
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "fallback"


def test_kernel_count_per_call(monkeypatch):
    """One launch for no transform and scale-power, three for the softmask; nothing else is launched
    (the host code creates only torch.empty buffers)."""
    kernels = launch._kernels()
    launched = []
    for name in ("direct", "probs", "token_stats", "softmask"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernel, "run", lambda *a, _run=kernel.run, _name=name, **kw: (
            launched.append(_name), _run(*a, **kw))[1])
    q, k, v = inputs(7, rows=2, heads=1, length=8, tokens=4, d=16)
    for transform, expected in ((None, ["direct"]), (SCALE_POWER, ["direct"]),
                                (Softmask(0.65, 5.0, 1.55, groups=2), ["probs", "token_stats", "softmask"])):
        launched.clear()
        face_attention(q, k, v, transform)
        assert launched == expected


# -- PuLID: T = 10 id tokens plus the zero-token sink (8 "Fidelity", 16 "Extremely style") ----------
def zero_padded(k, v, sink):
    """k and v with `sink` explicit all-zero tokens appended (what sd-webui-controlnet's PuLID does)."""
    pad = k.new_zeros(k.shape[0], k.shape[1], sink, k.shape[3])
    return torch.cat((k, pad), dim=2), torch.cat((v, pad), dim=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sink", [8, 16])
@pytest.mark.parametrize("transform", [None, SCALE_POWER], ids=["none", "scale-power"])
def test_sink_kernels_match_torch_and_explicit_padding(dtype, sink, transform):
    """L = 20 with 16-query blocks (the last one partial), T = 10: the kernel equals the torch path's
    sink, and both equal zero-padding k and v to T + sink tokens (kernel at T + sink ≤ 32)."""
    q, k, v = inputs(11, rows=2, heads=2, tokens=10, dtype=dtype)
    got = face_attention(q, k, v, transform, sink=sink, block_l=BLOCK)
    assert_matches(got, ip_attention(q, k, v, transform, sink=sink))
    k_pad, v_pad = zero_padded(k, v, sink)
    assert_matches(got, ip_attention(q, k_pad, v_pad, transform))
    if dtype == torch.float32:   # the padded call through the kernels too (T = 18 / 26)
        assert_matches(face_attention(q, k_pad, v_pad, transform, block_l=BLOCK), got)
    assert (got.float() - face_attention(q, k, v, transform, block_l=BLOCK).float()).abs().max() > 1e-3, \
        "the sink must change the output"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("sink", [8, 16])
def test_sink_softmask_kernels_match_torch(dtype, sink):
    """Softmask with the sink: statistics over the 10 real tokens, in the kernels as in the torch path."""
    transform = Softmask(quantile=0.65, d=5.0, s=1.55, invert_first=False, adain=0.7, groups=2)
    q, k, v = inputs(12, rows=2, heads=1, tokens=10, dtype=dtype)
    assert_matches(face_attention(q, k, v, transform, sink=sink, block_l=BLOCK),
                   reference_sink(q, k, v, transform, sink))


def test_thirty_two_tokens_are_served():
    """PuLID v1.1's IDFormer has 32 id tokens: the kernels take T = 32."""
    q, k, v = inputs(13, rows=1, heads=1, tokens=32)
    assert_matches(face_attention(q, k, v, SCALE_POWER, block_l=BLOCK), reference(q, k, v, SCALE_POWER))


def reference_sink(q, k, v, transform, sink):
    if isinstance(transform, Softmask) and isinstance(transform.groups, int):
        transform = dataclasses.replace(transform, groups=torch.arange(q.shape[0]) % transform.groups)
    return ip_attention(q, k, v, transform, sink=sink)

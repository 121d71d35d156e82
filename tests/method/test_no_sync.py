"""Issue #8 item 1: no host-device synchronisation on the per-layer and per-step path.

`torch.compile(fn, fullgraph=True, backend="eager")` refuses a graph break: a `.item()`, an
`int()`/`bool()` of a tensor, `torch.unique`, a Python branch on a tensor's value, all fail it. So
every face-branch path and the DCG combination are traced here on CPU.
"""
import pytest
import torch

from fastface.method.attention import ip_attention
from fastface.method.guidance import dcg_eps, dcg_x0
from fastface.method.transforms import ScalePower, Softmask, TransformCache, adain_blend, adain_blend_lean, softmask
from fastface.presets import PRESETS


def qkv(tokens=4, rows=3, heads=2, length=24, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, heads, length, d, generator=g), torch.randn(rows, heads, tokens, d, generator=g),
            torch.randn(rows, heads, tokens, d, generator=g))


def fullgraph(fn):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager", dynamic=False)


TRANSFORMS = {
    "no transform": None,
    "scale-power": ScalePower(1.55, 1.3, 10.0),
    "scale-power, clamp binds": ScalePower(4.0, 0.8, 2.0),
    "scale-power with output AdaIN": ScalePower(1.45, 1.3, 10.0, output_adain=0.7),
    "softmask, call pooled": Softmask(0.65, 5.0, 1.55, adain=0.7),
    "softmask, per image (int groups)": Softmask(0.65, 7.5, 1.0, adain=0.7, groups=3),
    "softmask, per image (id tensor)": Softmask(0.65, 5.0, 1.55, groups=torch.tensor([0, 1, 2, 0, 1, 2])),
    "softmask, no inversion, s > clamp": Softmask(0.3, 5.0, 4.0, invert_first=False, clamp_max=2.0, adain=1.0),
}


@pytest.mark.parametrize("tokens", [4, 16])
@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_face_branch_traces_without_graph_breaks(name, tokens):
    transform = TRANSFORMS[name]
    q, k, v = qkv(tokens, rows=6)
    eager = ip_attention(q, k, v, transform)
    compiled = fullgraph(lambda q, k, v: ip_attention(q, k, v, transform))(q, k, v)
    torch.testing.assert_close(compiled, eager)


def test_recorder_path_traces_too():
    seen = []
    q, k, v = qkv()
    fn = fullgraph(lambda q, k, v: ip_attention(q, k, v, ScalePower(1.5, 1.3), recorder=lambda a, b: seen.append(b)))
    fn(q, k, v)
    assert seen and seen[-1].shape == (3, 2, 24, 4)


def test_softmask_function_traces():
    a = torch.rand(4, 2, 10, 4).softmax(-1)
    torch.testing.assert_close(fullgraph(lambda a: softmask(a, 0.65, 5.0, 1.55, groups=2))(a),
                               softmask(a, 0.65, 5.0, 1.55, groups=2))


@pytest.mark.parametrize("dim", [-1, 2])
def test_lean_adain_equals_the_reference_and_guards_per_position(dim):
    g = torch.Generator().manual_seed(3)
    x, ref = torch.randn(2, 3, 5, 6, generator=g), torch.randn(2, 3, 5, 6, generator=g) * 3 + 1
    lean = fullgraph(lambda x, r: adain_blend_lean(x, r, 0.7, dim))
    torch.testing.assert_close(lean(x, ref), adain_blend(x, ref, 0.7, dim), rtol=1e-5, atol=1e-5)
    bad = ref.clone()
    index = [1, 2, 3, 4]
    index[dim] = 0
    bad[tuple(index)] = float("inf")          # one statistic (one position) becomes infinite
    out = lean(x, bad)
    assert torch.isfinite(out).all()
    hit = torch.zeros_like(x, dtype=torch.bool)
    index[dim] = slice(None)
    hit[tuple(index)] = True                  # the line of values that shares that statistic
    torch.testing.assert_close(out[hit], x[hit])                                   # kept as is
    torch.testing.assert_close(out[~hit], adain_blend(x, ref, 0.7, dim)[~hit], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("phi", [0.0, 0.7])
def test_dcg_traces_without_graph_breaks(phi):
    g = torch.Generator().manual_seed(1)
    u, i, f, x = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(4))
    sigma = torch.tensor([2.0, 0.0])
    fullgraph(lambda u, i, f: dcg_eps(u, i, f, 1.5, 3.0, phi))(u, i, f)
    torch.testing.assert_close(fullgraph(lambda *a: dcg_x0(*a, 1.5, 3.0, phi))(x, sigma, u, i, f),
                               dcg_x0(x, sigma, u, i, f, 1.5, 3.0, phi))
    fullgraph(lambda *a: dcg_x0(*a, 1.5, 3.0, phi))(x, 3.0, u, i, f)   # a Python σ too


def test_transform_cache_builds_each_transform_once():
    cache = TransformCache(PRESETS["Realistic portrait"])
    first = cache.get("down", 1, 4, 2)
    assert cache.get("down", 1, 4, 2) is first
    assert cache.get("down", 0, 4, 2) is not first and cache.get("down", 0, 4, 2).d == 7.5
    assert cache.get("mid", 1, 4, 2) is None


@pytest.mark.parametrize("length", [24, 300])
def test_both_output_adain_forms_equal_the_reference(length):
    """Small maps take the stacked product, large ones the value-statistics form: both equal
    adain_blend(A'·V, A·V) over d."""
    q, k, v = qkv(4, rows=2, length=length, d=16)
    t = Softmask(0.65, 5.0, 1.55, adain=0.6)
    probs = torch.matmul(q, k.transpose(-1, -2)).mul(16 ** -0.5).softmax(-1)
    mapped = t(probs)
    expected = adain_blend(mapped @ v, probs @ v, 0.6, dim=-1)
    torch.testing.assert_close(ip_attention(q, k, v, t), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fullgraph(lambda q, k, v: ip_attention(q, k, v, t))(q, k, v), expected,
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["no transform", "scale-power", "softmask, per image (int groups)"])
def test_sink_face_branch_traces_without_graph_breaks(name):
    """PuLID's 10 id tokens with the zero-token sink (issue 13), and its Fidelity gate and projection."""
    from fastface.hosts.a1111.pulid import fidelity_gate

    transform = TRANSFORMS[name]
    q, k, v = qkv(10, rows=6)
    eager = ip_attention(q, k, v, transform, sink=8)
    torch.testing.assert_close(fullgraph(lambda q, k, v: ip_attention(q, k, v, transform, sink=8))(q, k, v), eager)
    torch.testing.assert_close(fullgraph(lambda q, k: fidelity_gate(q, k, 8))(q, k), fidelity_gate(q, k, 8))

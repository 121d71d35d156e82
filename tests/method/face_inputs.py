"""Small random inputs of the face branch, shared by the method tests."""
import torch
from hypothesis import strategies as st

seeds = st.integers(0, 2**31 - 1)


def qkv(seed, b=3, heads=2, length=16, tokens=4, d=8, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, heads, length, d, generator=g)
    k = torch.randn(b, heads, tokens, d, generator=g)
    v = torch.randn(b, heads, tokens, d, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def probs(seed, b=2, heads=2, length=12, tokens=4, spread=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, heads, length, tokens, generator=g) * spread).softmax(-1)

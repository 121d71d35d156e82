"""`ip_attention(..., kernels=KernelSwitch())`: when the fused face branch is used, and the
fall-back to the torch path (one log line, off for the rest of the job) when a kernel fails.
The Triton kernels themselves are tested in tests/kernels/test_fused_face.py; here a stand-in module takes
their place, so these tests run with or without Triton."""
import logging
import sys
import types

import pytest
import torch

import fastface.kernels
from fastface.method.attention import KernelSwitch, ip_attention
from fastface.method.transforms import ScalePower, Softmask


@pytest.fixture
def fake_kernels(monkeypatch):
    calls = []
    module = types.ModuleType("fastface.kernels.launch")
    module.behaviour = "ok"

    def available(device):
        return True

    def face_attention(q, k, v, transform, sink=0):
        calls.append(type(transform).__name__)
        if module.behaviour == "unsupported":
            raise NotImplementedError("tensor groups")
        if module.behaviour == "broken":
            raise RuntimeError("an illegal memory access was encountered")
        return ip_attention(q, k, v, transform, sink=sink) + 1.0   # recognisable

    module.available, module.face_attention = available, face_attention
    monkeypatch.setitem(sys.modules, "fastface.kernels.launch", module)
    monkeypatch.setattr(fastface.kernels, "launch", module, raising=False)   # `from . import` reads this first
    return module, calls


def qkv():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 2, 9, 8, generator=g), torch.randn(2, 2, 4, 8, generator=g),
            torch.randn(2, 2, 4, 8, generator=g))


def test_no_switch_means_torch_path(fake_kernels):
    _, calls = fake_kernels
    ip_attention(*qkv(), ScalePower(1.5, 1.3))
    assert calls == []


def test_switch_on_uses_the_kernels(fake_kernels):
    _, calls = fake_kernels
    switch = KernelSwitch()
    q, k, v = qkv()
    out = ip_attention(q, k, v, Softmask(0.65, 5.0, 1.55), kernels=switch)
    torch.testing.assert_close(out, ip_attention(q, k, v, Softmask(0.65, 5.0, 1.55)) + 1.0)
    assert calls == ["Softmask"] and switch.enabled


def test_recording_keeps_the_torch_path(fake_kernels):
    _, calls = fake_kernels
    seen = []
    ip_attention(*qkv(), ScalePower(1.5, 1.3), kernels=KernelSwitch(), recorder=lambda a, b: seen.append(a))
    assert calls == [] and len(seen) == 1


def test_unsupported_input_falls_back_quietly(fake_kernels, caplog):
    module, calls = fake_kernels
    module.behaviour = "unsupported"
    switch = KernelSwitch()
    q, k, v = qkv()
    with caplog.at_level(logging.INFO, logger="fastface"):
        out = ip_attention(q, k, v, ScalePower(1.5, 1.3), kernels=switch)
    torch.testing.assert_close(out, ip_attention(q, k, v, ScalePower(1.5, 1.3)))
    assert switch.enabled and not caplog.records   # the next call may still fit the kernels


def test_kernel_error_turns_the_kernels_off_for_the_job(fake_kernels, caplog):
    module, calls = fake_kernels
    module.behaviour = "broken"
    switch = KernelSwitch()
    q, k, v = qkv()
    with caplog.at_level(logging.INFO, logger="fastface"):
        first = ip_attention(q, k, v, ScalePower(1.5, 1.3), kernels=switch)
        second = ip_attention(q, k, v, ScalePower(1.5, 1.3), kernels=switch)
    torch.testing.assert_close(first, ip_attention(q, k, v, ScalePower(1.5, 1.3)))
    torch.testing.assert_close(second, first)
    assert calls == ["ScalePower"]                       # not tried again
    assert not switch.enabled and "illegal memory access" in switch.failed
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1

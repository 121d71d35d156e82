"""The fault-injection extension of the opt-in real-WebUI tests (tests/webui/fault_injection),
checked here on the A1111 stand-ins: it raises where its spec says, FastFace answers as on a
real host, and it leaves nothing behind (also after a job that raised)."""
import os
import sys

import pytest
import torch

from fastface.hosts.a1111 import attention as a1111_attention
from fastface.hosts.common import NOTE_KEY, PatchSet

from test_out_of_memory_a1111 import MEMORY_WORDS, OOM, REALISTIC, first_results, fresh_results, host, job  # noqa: F401

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "webui", "fault_injection"))
import fastface_faults  # noqa: E402


def with_faults(spec):
    """The extension's script hooks (process, postprocess) for one job."""
    def process(p):
        p.fastface_faults = fastface_faults.install(p, spec)

    def postprocess(p):
        fastface_faults.finish(p, p.fastface_faults)
    return [(process, postprocess)]


def test_spec():
    assert fastface_faults.parse(" face:2, dcg:1 ") == {"face": 2, "dcg": 1}
    assert fastface_faults.parse("") == {}
    for bad in ("face", "face:0", "gpu:1", "dcg:x"):
        with pytest.raises(ValueError):
            fastface_faults.parse(bad)


@pytest.mark.parametrize("spec,place", [("face:2", "the face branch"),
                                        ("dcg:1", "the UNet call that carries DCG's extra rows")])
def test_fastfaces_own_points_give_the_image_and_the_note(host, spec, place):
    before = first_results(host)
    original = a1111_attention.ip_attention
    _, _, _, p = job(host, REALISTIC, scripts=with_faults(spec))
    assert p.extra_generation_params[fastface_faults.INFOTEXT_KEY] == f"{spec} raised"
    assert f"{MEMORY_WORDS} {place}" in p.extra_generation_params[NOTE_KEY]
    assert a1111_attention.ip_attention is original and not fastface_faults.Faults.live
    assert all(not m._forward_pre_hooks for m in host.unet.modules())
    after = fresh_results(host)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_host_unet_point_fails_the_job_and_the_next_job_undoes_the_wrapping(host):
    with pytest.raises(OOM):
        job(host, REALISTIC, scripts=with_faults("host_unet:1"))
    assert fastface_faults.Faults.live   # postprocess did not run, as on the real hosts
    _, _, _, p = job(host, REALISTIC, scripts=with_faults(""))   # the next job's start undoes it
    assert not fastface_faults.Faults.live and not PatchSet.live
    assert all(not m._forward_pre_hooks for m in host.unet.modules())
    assert fastface_faults.INFOTEXT_KEY not in p.extra_generation_params

"""The note for a request whose IP-Adapter unit the WebUI dropped (issue 21, item 4).

A failing preprocessor (reported for Forge Neo builds, whose CLIP-Vision IP-Adapter preprocessors all
fail) or a missing insightface make the host log an error and drop the unit: it installs no IP-Adapter
layers. FastFace's note then names
the unit's model and points to the server log instead of saying "no FaceID unit". The units are
put in `p.script_args` between the ControlNet script's `args_from` and `args_to`, as A1111 and
Forge hold them (dicts from the API, objects from the UI); the hosts run on their stand-ins."""
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fastface.hosts import readout, webui
from fastface.hosts.common import no_face_note
from fastface.presets import PRESETS
from fastface.views import likeness

import forge_standins as fs
from test_host_a1111 import SIGMAS4, host, make_job, run, text   # noqa: F401  (host: fixture)
from test_host_forge import Run, float64_standins, forge_env   # noqa: F401  (fixtures)
from test_host_reforge import REFORGE, reforge_env   # noqa: F401  (fixture)
from test_readout import RED, faceid_unit, lm, models_at, pack   # noqa: F401  (fixtures)

REALISTIC = PRESETS["Realistic"]
FACEID = {"enabled": True, "module": "ip-adapter_face_id_plus", "model": "ip-adapter-faceid-plusv2_sd15 [b8a6f754]"}
FORGE_FACEID = {"enabled": True, "module": "InsightFace+CLIP-H (IPAdapter)", "model": "ip-adapter-faceid-plusv2_sdxl"}
PLAIN = SimpleNamespace(enabled=True, module="ip-adapter_clip_sd15", model="ip-adapter_sd15 [6a3f6166]")
PLUS = {"enabled": True, "module": "ip-adapter_clip_sd15", "model": "ip-adapter-plus_sd15 [c817b455]"}
FORGE_PLAIN = {"enabled": True, "module": "CLIP-ViT-H (IPAdapter)", "model": "ip-adapter_sdxl_vit-h"}
OPENPOSE = {"enabled": True, "module": "openpose", "model": "control_v11p_sd15_openpose [cab727d4]"}
LOG_SAYS = "installed no IP-Adapter layers (the WebUI's IP-Adapter did not apply, its error is in the server log)"


class ControlNetScript:
    """sd-webui-controlnet's / Forge's ControlNet script as `controlnet_units` reads it; on A1111 it
    also carries the live network `ip_adapters` reads."""

    def __init__(self, start, end, latest_network=None):
        self.args_from, self.args_to = start, end
        self.latest_network = latest_network

    def title(self):
        return "ControlNet"


def send_units(p, units) -> None:
    """The request's ControlNet units in `p.script_args`, after one argument of another script."""
    scripts = list(getattr(getattr(p, "scripts", None), "alwayson_scripts", None) or [])
    network = getattr(scripts[0], "latest_network", None) if scripts else None
    p.scripts = SimpleNamespace(alwayson_scripts=[ControlNetScript(1, 1 + len(units), network)])
    p.script_args = [None] + list(units)


# -- the helper: which units name an IP-Adapter ---------------------------------------------------------
def test_enabled_units_naming_an_ip_adapter_give_their_models():
    units = [FACEID, FORGE_FACEID, PLAIN, OPENPOSE,
             {"enabled": True, "module": "ip-adapter_pulid", "model": "ip-adapter_pulid_sdxl_fp16 [1a2b3c4d]"},
             {"enabled": True, "module": "InsightFace (IPAdapter)", "model": "None"},     # no model: the module
             SimpleNamespace(enabled=True, module="CLIP-ViT-H (IPAdapter)", model="IP_Adapter_SDXL_ViT-H"),
             {"enabled": True, "module": "none", "model": "IPAdapter-FaceID.bin"}]
    assert readout.ip_adapter_unit_models(units) == [
        "ip-adapter-faceid-plusv2_sd15 [b8a6f754]", "ip-adapter-faceid-plusv2_sdxl", "ip-adapter_sd15 [6a3f6166]",
        "ip-adapter_pulid_sdxl_fp16 [1a2b3c4d]", "InsightFace (IPAdapter)", "IP_Adapter_SDXL_ViT-H",
        "IPAdapter-FaceID.bin"]


def test_disabled_units_and_units_without_enabled_do_not_count():
    units = [dict(FACEID, enabled=False), {k: v for k, v in FACEID.items() if k != "enabled"},
             SimpleNamespace(module="ip-adapter_face_id", model="ip-adapter-faceid_sd15"), OPENPOSE]
    assert readout.ip_adapter_unit_models(units) == []


# -- A1111 + sd-webui-controlnet ------------------------------------------------------------------------
def test_a1111_faceid_unit_without_ip_adapter_layers_names_the_model(host, caplog):
    p, _, _ = make_job(host, adapters=())          # sd-webui-controlnet dropped the unit
    send_units(p, [OPENPOSE, FACEID])
    with caplog.at_level("INFO", logger="fastface"):
        _, job = run(p, REALISTIC, marked=False)
    # no "no likeness readout": the readout reads the FaceID unit from the request (test below)
    expected = ("the ControlNet unit with ip-adapter-faceid-plusv2_sd15 [b8a6f754] " + LOG_SAYS
                + ": DCG runs without the face branch, no attention transform")
    assert job.notes == [expected] and job.failed is None
    assert job.infotext_params()["FastFace note"] == expected
    assert [r.getMessage() for r in caplog.records if r.name == "fastface"].count(expected) == 1   # logged once


def test_a1111_plain_ip_adapter_units_are_named_each(host):
    p, _, _ = make_job(host, adapters=())
    send_units(p, [PLAIN, PLUS])
    _, job = run(p, REALISTIC, marked=False)
    assert job.notes == ["the ControlNet units with ip-adapter_sd15 [6a3f6166] and ip-adapter-plus_sd15 [c817b455] "
                         + LOG_SAYS + ": DCG runs without the face branch, no attention transform, no likeness readout"]


@pytest.mark.skipif(likeness.unavailable_reason() is not None, reason="insightface etc. are in the test extra")
def test_a1111_the_readout_still_compares_with_the_dropped_faceid_units_image(host, lm, pack, models_at):
    """Why the note leaves out "no likeness readout" for a FaceID unit: the readout reads the unit
    from the request, not the host's layers, and gives the image its ID."""
    models_at(pack)
    p, _, _ = make_job(host, adapters=())
    send_units(p, [faceid_unit(lm)])
    webui.process(p, REALISTIC)
    webui.before_sampling(p)
    p.sampler.sample(torch.randn(1, 4, 2, 2) * SIGMAS4[0], SIGMAS4, text(1), text(2), [[(0, 1.0)]], 1.0)
    webui.postprocess_image(p, SimpleNamespace(image=Image.fromarray(lm.face_image(RED))))
    job = p.fastface_job
    webui.postprocess(p, None)
    assert p.extra_generation_params[readout.ID_KEY] == ["1.000"]
    assert job.notes == ["the ControlNet unit with ip-adapter-faceid_sd15 [0a1b2c3d] " + LOG_SAYS
                         + ": DCG runs without the face branch, no attention transform"]


@pytest.mark.parametrize("units", [[], [OPENPOSE], [dict(FACEID, enabled=False)]],
                         ids=["no unit", "no IP-Adapter unit", "disabled"])
def test_a1111_without_an_enabled_ip_adapter_unit_keeps_the_no_faceid_note(host, units):
    p, _, _ = make_job(host, adapters=())
    send_units(p, units)
    _, job = run(p, REALISTIC, marked=False)
    assert job.notes == [no_face_note("sd-webui-controlnet", REALISTIC)]


def test_a1111_applied_plain_ip_adapter_keeps_the_no_faceid_note(host):
    p, _, adapters = make_job(host, adapters=(("plain", 0),))     # the plain IP-Adapter did apply
    send_units(p, [PLAIN])
    assert p.scripts.alwayson_scripts[0].latest_network.control_params[0].control_model is adapters[0]
    _, job = run(p, REALISTIC)
    assert job.notes == [no_face_note("sd-webui-controlnet", REALISTIC)]


# -- Forge 2, Forge Classic and reForge ------------------------------------------------------------------
class DroppedUnitRun(Run):
    """Forge after its ControlNet logged the IP-Adapter unit's error and dropped it: the UNet it hands
    to FastFace carries no attn2 patch (so the flavour's patch class plays no part)."""

    def controlnet(self):
        objects = self.p.sd_model.forge_objects = self.p.sd_model.forge_objects_after_applying_lora.shallow_copy()
        self.controlnet_unet = objects.unet
        return objects.unet


def forge_job(run_class, units, **host):
    run = run_class(REALISTIC, **host)
    send_units(run.p, units)
    run.start()
    run.sample()
    run.end()
    return run.job


FLAVOURS = {"Forge 2": ("forge_env", {}), "Forge Classic": ("forge_env", {"patch_class": fs.ClassicCrossAttentionPatch}),
            "reForge": ("reforge_env", REFORGE)}


@pytest.fixture(params=list(FLAVOURS))
def flavour(request):
    env, host = FLAVOURS[request.param]
    request.getfixturevalue(env)
    return host


def test_forge_faceid_unit_without_ip_adapter_patches_names_the_model(flavour, caplog):
    with caplog.at_level("INFO", logger="fastface"):
        job = forge_job(DroppedUnitRun, [FORGE_FACEID], **flavour)
    expected = ("the ControlNet unit with ip-adapter-faceid-plusv2_sdxl " + LOG_SAYS
                + ": DCG runs without the face branch, no attention transform")
    assert job.notes == [expected] and job.failed is None
    assert [r.getMessage() for r in caplog.records if r.name == "fastface"].count(expected) == 1


def test_forge_dropped_plain_ip_adapter_unit_leaves_nothing_to_read_out(flavour):
    job = forge_job(DroppedUnitRun, [PLAIN], **flavour)   # no FaceID or PuLID unit: the readout has no reference
    assert job.notes == ["the ControlNet unit with ip-adapter_sd15 [6a3f6166] " + LOG_SAYS
                         + ": DCG runs without the face branch, no attention transform, no likeness readout"]


@pytest.mark.parametrize("units", [[], [OPENPOSE], [dict(FORGE_FACEID, enabled=False)]],
                         ids=["no unit", "no IP-Adapter unit", "disabled"])
def test_forge_without_an_enabled_ip_adapter_unit_keeps_the_no_faceid_note(flavour, units):
    job = forge_job(DroppedUnitRun, units, **flavour)
    assert job.notes == [no_face_note("Forge's ControlNet", REALISTIC)]


def test_forge_applied_plain_ip_adapter_keeps_the_no_faceid_note(flavour):
    job = forge_job(Run, [FORGE_PLAIN], face=False, **flavour)     # its attn2 patches are in the UNet
    assert job.notes == [no_face_note("Forge's ControlNet", REALISTIC)]

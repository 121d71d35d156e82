"""fastface.eval.client: the ID readout of an infotext, the server check, a server's own unit."""
from eval_support import write_config
from fastface.eval.client import readout_from_infotext
from fastface.eval.config import ServerError
from fastface.eval.run import main


def test_readout_parsing():
    assert readout_from_infotext("p\nSteps: 4, FastFace ID: 0.634, Seed: 1") == (0.634, True)
    assert readout_from_infotext("p\nSteps: 4, FastFace ID: no face") == (None, False)
    assert readout_from_infotext("p\nSteps: 4, FastFace: \"preset=Off\"") == (None, None)


def test_unreachable_server_is_one_clear_line(workspace, capsys):
    cfg = write_config(workspace, ["http://127.0.0.1:9"])
    assert main(["--config", cfg]) == ServerError.code
    err = capsys.readouterr().err
    assert "no usable server" in err and "Traceback" not in err


def test_server_without_fastface_or_controlnet_is_refused(workspace, servers, capsys):
    a = servers(scripts=("controlnet",))
    assert main(["--config", write_config(workspace, [a])]) == ServerError.code
    assert "does not have the FastFace extension" in capsys.readouterr().out


def test_a_server_can_have_its_own_unit(workspace, servers):
    a, b = servers(name="A"), servers(name="B")
    forge_unit = {"module": "InsightFace+CLIP-H (IPAdapter)", "model": "ip-adapter-faceid-plusv2_sd15"}
    cfg = write_config(workspace, [a, {"url": b.url, "unit": forge_unit, "controlnet_key": "ControlNet"}])
    assert main(["--config", cfg]) == 0
    assert a.requests and b.requests
    assert {q["alwayson_scripts"]["controlnet"]["args"][0]["model"] for q in a.requests} == {"ip-adapter-faceid_sd15"}
    units = [q["alwayson_scripts"]["ControlNet"]["args"][0] for q in b.requests]
    assert {u["module"] for u in units} == {forge_unit["module"]} and all(u["weight"] == 0.7 for u in units)



def test_a_pulid_unit_is_sent_as_written(workspace, servers):
    """Issue 13: fastface-eval with sd-webui-controlnet's PuLID — module, model and the PuLID mode
    reach every request's unit, with the unit weight λ and the identity's photo."""
    a = servers(name="A")
    unit = {"module": "ip-adapter_pulid", "model": "ip-adapter_pulid_sdxl_fp16", "pulid_mode": "Extremely style"}
    assert main(["--config", write_config(workspace, [a], unit=unit)]) == 0
    sent = [q["alwayson_scripts"]["controlnet"]["args"][0] for q in a.requests]
    assert sent and all(u["module"] == "ip-adapter_pulid" and u["model"] == "ip-adapter_pulid_sdxl_fp16"
                        and u["pulid_mode"] == "Extremely style" and u["weight"] == 0.7 and u["image"] for u in sent)


def test_an_instantid_pair_is_sent_ip_unit_first_then_the_keypoint_unit(workspace, servers):
    """Issue 22: fastface-eval with InstantID — the IP-Adapter unit (the identity unit: weight λ, the
    identity's photo) and then the keypoint ControlNet unit (`units_after`, as written, the identity's
    photo where it names none), the order sd-webui-controlnet asserts (controlnet.py L1188-1197)."""
    a = servers(name="A")
    ip_unit = {"module": "instant_id_face_embedding", "model": "ip-adapter_instant_id_sdxl [eb2d3ec0]"}
    keypoints = {"module": "instant_id_face_keypoints", "model": "control_instant_id_sdxl [c5c25a50]",
                 "weight": 0.8, "control_mode": "Balanced"}
    assert main(["--config", write_config(workspace, [a], unit=ip_unit, units_after=[keypoints])]) == 0
    assert a.requests
    for request in a.requests:
        first, second = request["alwayson_scripts"]["controlnet"]["args"]
        assert (first["module"], first["weight"]) == (ip_unit["module"], 0.7) and first["image"]
        assert {k: second[k] for k in keypoints} == keypoints and second["enabled"]
        assert second["image"] == first["image"]     # the reference's keypoints


def test_units_after_must_name_module_and_model(workspace, servers, capsys):
    from fastface.eval.config import ConfigError
    a = servers(name="A")
    cfg = write_config(workspace, [a], units_after=[{"module": "instant_id_face_keypoints"}])
    assert main(["--config", cfg]) == ConfigError.code
    assert "field 'units_after'" in (err := capsys.readouterr().err) and "with 'module' and 'model'" in err

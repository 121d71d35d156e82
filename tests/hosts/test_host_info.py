"""fastface.hosts.host_info: the host and IP-Adapter provider of the start-up line, with stand-in modules.

What each stand-in mirrors:
- A1111 v1.10.1 (82a973c0): `modules/launch_utils.py` L73-86 `git_tag()` (`git describe --tags`:
  'v1.10.1'); `modules/extensions.py` L21-28 `active()`, Extension `.name` / `.path`;
  sd-webui-controlnet 1.1.455 `scripts/controlnet_version.py` L1 `version_flag = 'v1.1.455'`.
- Forge 2 (dfdcbab6): `modules_forge/forge_version.py` `version = '2.0.1v1.10.1'`; launch_utils L94-95
  `git_tag()` = 'f' + version + '-' + `git describe --tags` ('previous-669-gdfdcbab6' there); no
  `ldm_patched`; built-in `extensions-builtin/sd_forge_ipadapter`.
- Forge Neo 2.26 (repack 5692d2d): `version = "neo"`, `release = "2.26"`; launch_utils L55-56 `git_tag()`
  returns `forge_version.version`.
- Forge Classic (Haoming02 `classic`): `version = "classic"`, `git_tag()` returns it; `ldm_patched`.
- reForge (Panchovix `main`): `version = '2.0.0dev-v1.10.1RC'`, `git_tag()` as Forge 2's; `ldm_patched`.
"""
from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from fastface.hosts import host_info

WEBUI_MODULES = ("modules", "modules.launch_utils", "modules.extensions", "modules_forge",
                 "modules_forge.forge_version", "ldm_patched", "backend")


@pytest.fixture
def host(monkeypatch, tmp_path):
    """Installs one host's stand-in modules; nothing of a WebUI is left from the real environment."""
    for name in WEBUI_MODULES:
        monkeypatch.delitem(sys.modules, name, raising=False)

    def install(*, git_tag=None, forge_version=None, extensions=(), ldm_patched=False, active_raises=False):
        modules = types.ModuleType("modules")
        modules.__path__ = []   # a package, so `modules.x` not stood in fails to import like a missing module
        monkeypatch.setitem(sys.modules, "modules", modules)
        if git_tag is not None:
            launch_utils = types.ModuleType("modules.launch_utils")
            launch_utils.git_tag = git_tag
            monkeypatch.setitem(sys.modules, "modules.launch_utils", launch_utils)
        ext = types.ModuleType("modules.extensions")

        def active():
            if active_raises:
                raise AttributeError("'NoneType' object has no attribute 'disable_all_extensions'")
            return list(extensions)
        ext.active = active
        monkeypatch.setitem(sys.modules, "modules.extensions", ext)
        if forge_version is not None:
            monkeypatch.setitem(sys.modules, "modules_forge", types.ModuleType("modules_forge"))
            version_module = types.ModuleType("modules_forge.forge_version")
            for key, value in forge_version.items():
                setattr(version_module, key, value)
            monkeypatch.setitem(sys.modules, "modules_forge.forge_version", version_module)
        if ldm_patched:
            monkeypatch.setitem(sys.modules, "ldm_patched", types.ModuleType("ldm_patched"))
    return install


def controlnet_extension(tmp_path, folder="sd-webui-controlnet", flag="v1.1.455"):
    path = tmp_path / folder
    (path / "scripts").mkdir(parents=True)
    (path / "scripts" / "controlnet_version.py").write_text(
        f"version_flag = '{flag}'\n# A smart trick to know if user has updated as well as if user has restarted terminal.\n")
    return SimpleNamespace(name=folder, path=str(path), enabled=True, is_builtin=False)


def builtin(name):
    return SimpleNamespace(name=name, path=f"/webui/extensions-builtin/{name}", enabled=True, is_builtin=True)


FORGE_BUILTINS = [builtin("sd_forge_controlnet"), builtin("sd_forge_ipadapter"), builtin("sd_forge_lora")]


def test_a1111_with_sd_webui_controlnet(host, tmp_path):
    host(git_tag=lambda: "v1.10.1", extensions=[builtin("LDSR"), controlnet_extension(tmp_path)])
    assert host_info.describe() == "AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455"


def test_a1111_finds_controlnet_whatever_its_folder_is_called(host, tmp_path):
    host(git_tag=lambda: "v1.10.1-5-g82a973c0", extensions=[controlnet_extension(tmp_path, "sd-webui-controlnet-main")])
    assert host_info.describe() == "AUTOMATIC1111 v1.10.1-5-g82a973c0, sd-webui-controlnet 1.1.455"


def test_a1111_without_controlnet(host):
    host(git_tag=lambda: "v1.10.1", extensions=[builtin("LDSR")])
    assert host_info.describe() == "AUTOMATIC1111 v1.10.1, no sd-webui-controlnet"


def test_a1111_whose_version_git_cannot_tell(host, tmp_path):
    host(git_tag=lambda: "<none>", extensions=[controlnet_extension(tmp_path)])
    assert host_info.describe() == "AUTOMATIC1111 (version unknown), sd-webui-controlnet 1.1.455"


def test_forge_2(host):
    host(git_tag=lambda: "f2.0.1v1.10.1-previous-669-gdfdcbab6", forge_version={"version": "2.0.1v1.10.1"},
         extensions=FORGE_BUILTINS)
    assert host_info.describe() == \
        "Forge 2.0.1v1.10.1-previous-669-gdfdcbab6, built-in IP-Adapter (sd_forge_ipadapter)"


def test_forge_2_without_a_git_checkout_or_its_ip_adapter(host):
    host(git_tag=lambda: "f2.0.1v1.10.1-<none>", forge_version={"version": "2.0.1v1.10.1"},
         extensions=[builtin("sd_forge_controlnet")])
    assert host_info.describe() == "Forge 2.0.1v1.10.1, no IP-Adapter (sd_forge_ipadapter is not active)"


def test_forge_neo(host):
    host(git_tag=lambda: "neo", forge_version={"version": "neo", "release": "2.26"}, extensions=FORGE_BUILTINS)
    assert host_info.describe() == "Forge Neo 2.26, built-in IP-Adapter (sd_forge_ipadapter)"


def test_forge_classic(host):
    host(git_tag=lambda: "classic", forge_version={"version": "classic"}, ldm_patched=True,
         extensions=FORGE_BUILTINS)
    assert host_info.describe() == "Forge Classic, built-in IP-Adapter (sd_forge_ipadapter)"


def test_reforge(host):
    host(git_tag=lambda: "f2.0.0dev-v1.10.1RC-12-g3b56b268", forge_version={"version": "2.0.0dev-v1.10.1RC"},
         ldm_patched=True, extensions=FORGE_BUILTINS)
    assert host_info.describe() == "reForge 2.0.0dev-v1.10.1RC-12-g3b56b268, built-in IP-Adapter (sd_forge_ipadapter)"


def test_first_generation_forge(host):
    host(git_tag=lambda: "f0.0.17v1.8.0rc-v1.8.0", forge_version={"version": "0.0.17v1.8.0rc"}, ldm_patched=True,
         extensions=FORGE_BUILTINS)
    assert host_info.describe() == "Forge 0.0.17v1.8.0rc-v1.8.0 (first generation), built-in IP-Adapter (sd_forge_ipadapter)"


def test_no_webui_is_an_unknown_host(host):
    assert host_info.describe() == "unknown host"   # the fixture removed every WebUI module


def test_a_webui_with_other_internals_is_an_unknown_host(host):
    host()   # a `modules` package without launch_utils (another WebUI)
    assert host_info.describe() == "unknown host"


def broken():
    raise RuntimeError("git exploded")


@pytest.mark.parametrize("forge", [False, True])
def test_host_internals_that_raise_never_fail_the_line(host, forge):
    host(git_tag=broken, forge_version={"version": "2.0.1v1.10.1"} if forge else None, active_raises=True)
    expected = "Forge 2.0.1v1.10.1" if forge else "AUTOMATIC1111 (version unknown)"
    assert host_info.describe() == f"{expected}, IP-Adapter unknown"


def test_odd_version_values_never_fail_the_line(host):
    host(git_tag=lambda: None, forge_version={"version": None, "release": None})
    assert host_info.describe() == "Forge (version unknown), no IP-Adapter (sd_forge_ipadapter is not active)"
    host(git_tag=lambda: 42, forge_version={"version": "neo"})
    assert host_info.describe() == "Forge Neo, no IP-Adapter (sd_forge_ipadapter is not active)"


def test_anything_unexpected_is_an_unknown_host(host, monkeypatch):
    monkeypatch.setattr(host_info, "host_name", broken)
    assert host_info.describe() == "unknown host"

"""Which WebUI FastFace runs in and which IP-Adapter it works with, in the words of the start-up
line: 'AUTOMATIC1111 v1.10.1, sd-webui-controlnet 1.1.455', 'Forge 2.0.1v1.10.1-previous-669-gdfdcbab6,
built-in IP-Adapter (sd_forge_ipadapter)', 'Forge Neo 2.26, …'. Duck typing on what each host has:

    Forge family   `modules_forge.forge_version.version`: '2.0.1v1.10.1' (Forge 2), 'neo' with a
                   `release` (Forge Neo), 'classic' (Forge Classic), '2.0.0dev-v1.10.1RC' (reForge);
                   the first generation (Forge 0.0.x, reForge) runs on `ldm_patched`, Forge 2 and Neo do not
    AUTOMATIC1111  `modules.launch_utils.git_tag()` (`git describe --tags`, cached by the host, which
                   prints it as "Version:" at launch and writes it to every infotext)
    IP-Adapter     A1111: sd-webui-controlnet's `scripts/controlnet_version.py` `version_flag`;
                   Forge family: the built-in `sd_forge_ipadapter` extension, when it is active

Never raises: what cannot be told is said ('unknown host', 'IP-Adapter unknown').
"""
from __future__ import annotations

import importlib
import os
import re
import sys
from typing import Any, Optional

UNKNOWN_HOST = "unknown host"
UNKNOWN_PROVIDER = "IP-Adapter unknown"
FORGE_IPADAPTER = "sd_forge_ipadapter"
_CONTROLNET_VERSION_FILE = os.path.join("scripts", "controlnet_version.py")
_VERSION_FLAG = re.compile(r"""^version_flag\s*=\s*['"]v?([^'"]+)['"]""", re.MULTILINE)


def _webui_module(name: str) -> Optional[Any]:
    """A WebUI module the host has loaded (or can import); None outside that host."""
    module = sys.modules.get(name)
    if module is not None:
        return module
    try:
        return importlib.import_module(name)
    except Exception:   # no WebUI, or another one: ImportError, or whatever its import raises
        return None


def _host_tag(default: str) -> str:
    """The host's own version text (`launch_utils.git_tag()`), or `default`."""
    launch_utils = _webui_module("modules.launch_utils")
    try:
        tag = launch_utils.git_tag()
    except Exception:
        return default
    return tag.strip() if isinstance(tag, str) and tag.strip() not in ("", "<none>") else default


def _forge_name(forge_version: Any) -> str:
    version = str(getattr(forge_version, "version", "") or "").strip()
    if version == "neo":
        release = getattr(forge_version, "release", None)
        return f"Forge Neo {release}" if release else "Forge Neo"
    if version == "classic":
        return "Forge Classic"
    # Forge 2 and reForge: git_tag() is 'f' + version + '-' + `git describe` of the WebUI's checkout
    tag = _host_tag(version)
    if version and tag.startswith("f" + version):
        tag = tag[1:].removesuffix("-<none>")
    tag = tag or "(version unknown)"
    if "ldm_patched" in sys.modules:
        return f"reForge {tag}" if "1.10" in version else f"Forge {tag} (first generation)"
    return f"Forge {tag}"


def _forge_version() -> Optional[Any]:
    """Forge's version module: every host of the Forge family has it, AUTOMATIC1111 does not."""
    return _webui_module("modules_forge.forge_version")


def host_name() -> str:
    """The WebUI and its version, e.g. 'AUTOMATIC1111 v1.10.1' or 'Forge Neo 2.26'."""
    forge_version = _forge_version()
    if forge_version is not None:
        return _forge_name(forge_version)
    if hasattr(_webui_module("modules.launch_utils"), "git_tag"):
        return "AUTOMATIC1111 " + _host_tag("(version unknown)")
    return UNKNOWN_HOST


def _active_extensions() -> Optional[list]:
    """The WebUI's active extensions (`modules.extensions.active()`), or None where it has no list."""
    extensions = _webui_module("modules.extensions")
    try:
        return list(extensions.active())
    except Exception:
        return None


def _controlnet_version(path: str) -> Optional[str]:
    try:
        with open(os.path.join(path, _CONTROLNET_VERSION_FILE), encoding="utf-8") as f:
            found = _VERSION_FLAG.search(f.read())
    except (OSError, UnicodeDecodeError):
        return None
    return found.group(1) if found else None


def ip_adapter_provider(forge: bool) -> str:
    """Who runs IP-Adapter for FastFace: Forge's built-in extension or sd-webui-controlnet."""
    active = _active_extensions()
    if active is None:
        return UNKNOWN_PROVIDER
    if forge:
        if any(getattr(e, "name", None) == FORGE_IPADAPTER for e in active):
            return f"built-in IP-Adapter ({FORGE_IPADAPTER})"
        return f"no IP-Adapter ({FORGE_IPADAPTER} is not active)"
    for extension in active:   # found by its version file, whatever its folder is called
        version = _controlnet_version(str(getattr(extension, "path", "") or ""))
        if version:
            return f"sd-webui-controlnet {version}"
    return "no sd-webui-controlnet"


def describe() -> str:
    """'<host and its version>, <IP-Adapter provider and its version>'; never raises."""
    try:
        host = host_name()
        if host == UNKNOWN_HOST:
            return host
        return f"{host}, {ip_adapter_provider(forge=_forge_version() is not None)}"
    except Exception:
        return UNKNOWN_HOST

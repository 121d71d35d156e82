"""WebUI installer hook (run by A1111/Forge on start-up or when installed from the Extensions tab).

Installs only packages FastFace needs that are missing. torch and gradio always come from the
WebUI and are never installed or upgraded here. The guidance and attention core needs nothing
beyond torch, so the list below is empty.

The likeness readout needs insightface and onnxruntime. They are the host's (sd-webui-controlnet
and Forge install them for their own FaceID preprocessors) and FastFace does not install them:
pulling the CPU `onnxruntime` next to an existing `onnxruntime-gpu` breaks both (they own the
same package folder). Without them the readout is off and this prints one line saying why;
generation is not affected.
"""
import importlib.metadata
import importlib.util

# (import name, pip requirement, feature that needs it)
REQUIREMENTS: list[tuple[str, str, str]] = []
NEVER_INSTALL = {"torch", "gradio", "insightface", "onnxruntime"}


def missing(requirements=REQUIREMENTS):
    """The requirements whose module cannot be imported."""
    return [r for r in requirements if importlib.util.find_spec(r[0]) is None]


def onnxruntime_distributions():
    """Installed distributions that provide the `onnxruntime` package (onnxruntime, -gpu, -directml, …)."""
    names = set()
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name == "onnxruntime" or name.startswith("onnxruntime-") or name.startswith("onnxruntime_"):
            names.add(name)
    return sorted(names)


def readout_status():
    """None when the likeness readout can run, else the one line printed at start-up."""
    gone = [name for name, module in (("insightface", "insightface"), ("onnxruntime", "onnxruntime"))
            if importlib.util.find_spec(module) is None]
    if not gone:
        return None
    line = "[FastFace] likeness readout off: " + " and ".join(gone) + " not installed in the WebUI's Python"
    if "onnxruntime" in gone and onnxruntime_distributions():
        line += " (an onnxruntime distribution is listed but does not import; FastFace leaves it alone)"
    return line


def main():
    status = readout_status()
    if status:
        print(status)
    todo = [r for r in missing() if r[0] not in NEVER_INSTALL]
    if not todo:
        return
    import launch  # the WebUI's installer helpers (only present inside the WebUI)

    for module, requirement, feature in todo:
        if not launch.is_installed(module):
            launch.run_pip(f"install {requirement}", f"{requirement} for FastFace ({feature})")


main()  # the WebUI runs this file as a script (launch_utils.run_extension_installer)

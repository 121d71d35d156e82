"""WebUI installer hook (run by A1111/Forge on start-up or when installed from the Extensions tab).

Installs only packages FastFace needs that are missing. torch and gradio always come from the
WebUI and are never installed or upgraded here. The guidance and attention core needs nothing
beyond torch, so the list below is empty today; features that need more (a face-similarity
readout with insightface/onnxruntime) add their packages here, and must keep an existing
onnxruntime-gpu rather than pull in the CPU onnxruntime next to it.
"""
import importlib.util

# (import name, pip requirement, feature that needs it)
REQUIREMENTS: list[tuple[str, str, str]] = []
NEVER_INSTALL = {"torch", "gradio"}


def missing(requirements=REQUIREMENTS):
    """The requirements whose module cannot be imported."""
    return [r for r in requirements if importlib.util.find_spec(r[0]) is None]


def main():
    todo = missing()
    if not todo:
        return
    import launch  # the WebUI's installer helpers (only present inside the WebUI)

    for module, requirement, feature in todo:
        if module in NEVER_INSTALL:
            continue
        if not launch.is_installed(module):
            launch.run_pip(f"install {requirement}", f"{requirement} for FastFace ({feature})")


main()  # the WebUI runs this file as a script (launch_utils.run_extension_installer)

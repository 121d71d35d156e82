"""Host adapters: the only code that touches WebUI or IP-Adapter internals.

    common   job state, reversible patches, the error guard (no WebUI imports)
    webui    the accordion, paste, XYZ, API args and job life cycle (A1111 and Forge)
    a1111    DCG in A1111's CFG denoiser, AM on sd-webui-controlnet's IP-Adapter
    forge    DCG through Forge's UnetPatcher, AM on the built-in IP-Adapter's attn2 patches
"""

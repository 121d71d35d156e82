// Tooltips for FastFace's accordion and presets. Every control also carries its own tooltip
// (set from the Python schema); this adds the preset descriptions, which hints.js matches by the
// visible text of the dropdown's options.
(function() {
    if (typeof titles === "undefined") return;
    titles = {
        ...titles,
        "FastFace": "Identity adapters (IP-Adapter FaceID) on few-step distilled models: decoupled guidance and face-attention reshaping, no training.",
        "Off": "FastFace changes nothing (useful as a baseline in XYZ plots).",
        "Stylistic": "Decoupled guidance only: boosts the text and the face directions separately on intermediate steps. For stylised prompts.",
        "Realistic": "Decoupled guidance + scale-power face attention (the paper's main setting). For photos and portraits.",
        "Realistic portrait": "Decoupled guidance + scheduled softmask face attention with AdaIN.",
        "Scale-power only": "Only the scale-power face-attention transform; the WebUI's own CFG stays.",
        "Softmask only": "Only the scheduled-softmask face-attention transform; the WebUI's own CFG stays.",
    };
})();

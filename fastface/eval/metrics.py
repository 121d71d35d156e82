"""Scores computed here rather than read from the server: the face ID from a local insightface
pack (`face_models`, through fastface.views.likeness), CLIP-T from a local CLIP folder
(`clip_model`, through transformers) and AE, the LAION aesthetic predictor on that CLIP's image
embedding (`aesthetic_model`); each imported only when the config asks for it."""
from __future__ import annotations

import os
from typing import Callable, Optional

import numpy as np

from .config import Config, ConfigError


class ClipScorer:
    """Cosine similarity of CLIP ViT-L/14 image and prompt features (the paper's CLIP-T), from a local
    transformers-layout folder; never downloads."""

    def __init__(self, folder: str):
        import torch
        from transformers import CLIPModel, CLIPProcessor

        self.torch = torch
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(folder, local_files_only=True)

    def image_embedding(self, image):
        """The image's CLIP embedding, L2-normalised, (1, 768) for ViT-L/14 (CLIP-T and AE share it)."""
        with self.torch.no_grad():
            pixels = self.processor(images=[image], return_tensors="pt")["pixel_values"]
            img = self.model.get_image_features(pixel_values=pixels)
            return img / img.norm(dim=-1, keepdim=True)

    def similarity(self, image_embedding, prompt: str) -> float:
        """CLIP-T of an image (its `image_embedding`) and a prompt."""
        with self.torch.no_grad():
            batch = self.processor(text=[prompt], return_tensors="pt", padding=True, truncation=True)
            txt = self.model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            txt = txt / txt.norm(dim=-1, keepdim=True)
            return float((image_embedding * txt).sum())

    def __call__(self, image, prompt: str) -> float:
        return self.similarity(self.image_embedding(image), prompt)


CLIP_ABSENT = "not computed (set clip_model to a local CLIP ViT-L/14 folder to add it)"
AE_ABSENT = "not computed (set aesthetic_model to local LAION aesthetic predictor weights, with clip_model)"


def clip_source(cfg: Config) -> str:
    return f"CLIP ViT-L/14 from {cfg.clip_model}"


def ae_source(cfg: Config) -> str:
    return f"LAION aesthetic predictor {cfg.aesthetic_model}"


def notes_from_config(cfg: Config) -> tuple[str, str]:
    """The CLIP-T and AE notes of a run that generates nothing (the CSV holds what earlier runs scored)."""
    return (clip_source(cfg) if cfg.clip_model else CLIP_ABSENT,
            ae_source(cfg) if cfg.aesthetic_model and cfg.clip_model else AE_ABSENT)


def load_clip(cfg: Config) -> tuple[Optional[Callable], str]:
    if not cfg.clip_model:
        return None, CLIP_ABSENT
    if not os.path.isdir(cfg.clip_model):
        return None, f"not computed: {cfg.clip_model} does not exist"
    try:
        return ClipScorer(cfg.clip_model), clip_source(cfg)
    except Exception as exc:
        return None, f"not computed: the CLIP model in {cfg.clip_model} did not load ({type(exc).__name__}: {exc})"


# -- AE, the paper's aesthetic score (optional) ---------------------------------------------------------------
# The LAION aesthetic predictor ("improved-aesthetic-predictor", e.g. sac+logos+ava1-l14-linearMSE.pth):
# an MLP on the L2-normalised CLIP ViT-L/14 image embedding. Its state dict, and the layers the keys
# index (dropout between the first four linears, no activation):
AESTHETIC_LAYERS = {"layers.0": (1024, 768), "layers.2": (128, 1024), "layers.4": (64, 128),
                    "layers.6": (16, 64), "layers.7": (1, 16)}
_DROPOUT_AFTER = {0: 0.2, 2: 0.2, 4: 0.1}


def aesthetic_mlp(state: dict):
    """The predictor as a torch module, from a state dict of the real key layout (checked)."""
    import torch

    expected = {f"{prefix}.{kind}" for prefix in AESTHETIC_LAYERS for kind in ("weight", "bias")}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"not the LAION aesthetic predictor's layout (missing {missing[:3]}, unexpected {extra[:3]})")
    modules = []
    for index in range(8):
        shape = AESTHETIC_LAYERS.get(f"layers.{index}")
        if shape is not None:
            modules.append(torch.nn.Linear(shape[1], shape[0]))
        else:
            modules.append(torch.nn.Dropout(_DROPOUT_AFTER[index - 1]))
    mlp = torch.nn.Module()
    mlp.layers = torch.nn.Sequential(*modules)
    for key, value in state.items():
        prefix, kind = key.rsplit(".", 1)
        shape = AESTHETIC_LAYERS[prefix] if kind == "weight" else AESTHETIC_LAYERS[prefix][:1]
        if tuple(value.shape) != shape:
            raise ValueError(f"{key} has shape {tuple(value.shape)}, not {shape}")
    mlp.load_state_dict(state)
    return mlp.eval()


class AestheticScorer:
    """AE of an image: the aesthetic predictor on its CLIP embedding (the CLIP-T model's)."""

    def __init__(self, path: str, clip: ClipScorer):
        import torch

        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        self.mlp, self.clip, self.torch = aesthetic_mlp(state), clip, torch

    def __call__(self, image) -> float:
        return self.from_embedding(self.clip.image_embedding(image))

    def from_embedding(self, image_embedding) -> float:
        """AE of an image from its CLIP `image_embedding` (computed once for CLIP-T and AE)."""
        with self.torch.no_grad():
            return float(self.mlp.layers(image_embedding.to(self.mlp.layers[0].weight.dtype)).squeeze())


def load_aesthetic(cfg: Config, clip: Optional[Callable]) -> tuple[Optional[Callable], str]:
    if not cfg.aesthetic_model:
        return None, AE_ABSENT
    if not isinstance(clip, ClipScorer):
        return None, "not computed: the aesthetic predictor scores CLIP ViT-L/14 embeddings; set clip_model too"
    try:
        return AestheticScorer(cfg.aesthetic_model, clip), ae_source(cfg)
    except Exception as exc:
        return None, f"not computed: {cfg.aesthetic_model} did not load ({type(exc).__name__}: {exc})"


# -- the face ID (optional) ---------------------------------------------------------------------------------
def load_face_model(cfg: Config, identities: dict) -> tuple:
    """(the insightface model of `face_models`, the reference embedding of every identity)."""
    from ..views.likeness import FaceModel
    try:
        face_model = FaceModel.from_folder(cfg.face_models)
    except (FileNotFoundError, ImportError) as exc:
        raise ConfigError(f"{cfg.path}: field 'face_models': {exc}") from None
    from PIL import Image
    references: dict = {}
    for name, photos in identities.items():
        references[name] = face_model.reference(Image.open(p).convert("RGB") for p in photos)
    return face_model, references


def face_id(face_model, reference, image) -> tuple[Optional[float], bool]:
    """(ID, face found) of a generated image against its identity's reference embedding."""
    emb = face_model.embed(image)
    found = emb is not None and reference is not None
    score = float(np.dot(reference, emb)) if found else None
    return score, found

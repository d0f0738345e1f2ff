"""CLIP models through open_clip, text targets, and the spherical-distance prompt loss.

A CLIP model is named ``ARCH`` or ``ARCH:TAG`` (default tag ``openai``), e.g.
``ViT-B-32:openai`` or ``ViT-L-14:laion2b_s32b_b82k``; its weights are a local
file ``<weights_dir>/open_clip_<ARCH>-<TAG>.safetensors`` (``.bin``/``.pt`` also
accepted) loaded by open_clip itself (``pretrained=<path>``); open_clip's
metadata for the tag supplies quick-GELU and the normalisation mean/std.  The
name ``tiny`` builds a tiny random-initialised model (tests and the weights-free
demo).
"""
from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from renderer.base import CheckpointError
from renderer.layer_swap import swap_classes

log = logging.getLogger(__name__)

TINY_NAME = "kiosk-tiny-clip"
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def tiny_model_config(image_size: int = 32) -> dict:
    """An open_clip model config small enough for tests (vocabulary kept: the tokenizer needs it)."""
    return {
        "embed_dim": 32,
        "vision_cfg": {"image_size": image_size, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }


def register_tiny_config() -> str:
    """Register the tiny config with open_clip (idempotent); returns its model name."""
    import open_clip

    if TINY_NAME not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{TINY_NAME}.json"
            path.write_text(json.dumps(tiny_model_config()))
            open_clip.add_model_config(path)
    return TINY_NAME


def parse_clip_name(spec: str) -> tuple[str, str]:
    arch, _, tag = spec.partition(":")
    return arch, tag or "openai"


def clip_weights_path(spec: str, weights_dir: Path) -> Path | None:
    arch, tag = parse_clip_name(spec)
    for suffix in WEIGHT_SUFFIXES:
        p = Path(weights_dir) / f"open_clip_{arch}-{tag}{suffix}"
        if p.is_file():
            return p
    return None


def clip_checkpoint_name(spec: str) -> str:
    """The checkpoints.toml name (and file stem) for a CLIP spec."""
    arch, tag = parse_clip_name(spec)
    return f"open_clip_{arch}-{tag}"


@dataclass
class ClipModel:
    """One open_clip model with its normalisation, ready to embed cutouts and texts."""

    name: str
    model: nn.Module
    size: int
    mean: torch.Tensor
    std: torch.Tensor
    tokenizer: object
    weights: str  # file path, or "random-init"

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Cutouts in [0, 1] at ``size`` -> embeddings, float32 for the distances."""
        x = (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)
        return self.model.encode_image(x).float()

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str], device: torch.device) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(device)
        with torch.autocast(device_type=torch.device(device).type, enabled=False):
            return self.model.encode_text(tokens).float()


class SelfAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose self-attention without masks splits q, k and v with one ``unbind``.

    torch's general path slices the packed projection three times; backward, each slice makes and fills a
    zero tensor the size of all three and the engine adds them, then copies back through the transposes.
    In a Doorways step that plumbing of ViT-B-32's 12 attention layers took 12% of the time on the CPU (64
    cutouts, by the profile).  Here the gradient of the unbind is one stack.  The same arithmetic as torch's
    path (scaled dot-product attention, default scale); anything else (masks, weights wanted, cross
    attention, dropout while training) goes to torch's own forward.  Parameter names are unchanged.
    """

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        plain = (query is key and key is value and query.dim() == 3 and self.batch_first
                 and key_padding_mask is None and attn_mask is None and not need_weights and not is_causal
                 and self._qkv_same_embed_dim and self.in_proj_bias is not None and self.bias_k is None
                 and not self.add_zero_attn and (self.dropout == 0.0 or not self.training))
        if not plain:
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        b, n, e = query.shape
        qkv = F.linear(query, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.num_heads, e // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, n, head_dim)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, e)
        return F.linear(out, self.out_proj.weight, self.out_proj.bias), None


def use_self_attention(module: nn.Module) -> int:
    """Swap every ``nn.MultiheadAttention`` under ``module`` for :class:`SelfAttention` (same parameters)."""
    return swap_classes(module, {nn.MultiheadAttention: SelfAttention})


def load_clip(spec: str, weights_dir: Path, device: torch.device, seed: int = 0) -> ClipModel:
    """Build ``spec`` with open_clip; weights come only from a local file (``tiny``: random init)."""
    import open_clip

    if spec == "tiny":
        name = register_tiny_config()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name, pretrained=None)
        mean, std, weights = OPENAI_MEAN, OPENAI_STD, "random-init"
    else:
        arch, tag = parse_clip_name(spec)
        if arch not in open_clip.list_models():
            raise ValueError(f"unknown CLIP architecture {arch!r} in clip_models; open_clip knows e.g. "
                             f"{', '.join(open_clip.list_models()[:8])}, ...")
        path = clip_weights_path(spec, weights_dir)
        if path is None:
            raise FileNotFoundError(f"CLIP weights for {spec!r} not found in {weights_dir} "
                                    f"(expected {clip_checkpoint_name(spec)}.safetensors)")
        pcfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: CLIP weights file is empty (fetch it again: python -m kiosk "
                                  f"fetch-models {clip_checkpoint_name(spec)})")
        try:
            model = open_clip.create_model(arch, pretrained=str(path),
                                           force_quick_gelu=bool(pcfg.get("quick_gelu", False)))
        except Exception as exc:  # open_clip/torch raise many kinds for a damaged or refused file
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            why = next((ln for ln in lines if "GLOBAL" in ln), lines[0] if lines else "")
            raise CheckpointError(f"{path}: CLIP weights cannot be loaded ({type(exc).__name__}: {why[:300]}); "
                                  f"fetch them again: python -m kiosk fetch-models {clip_checkpoint_name(spec)}") from exc
        mean, std = pcfg.get("mean", OPENAI_MEAN), pcfg.get("std", OPENAI_STD)
        name, weights = arch, str(path)  # the tokenizer is the architecture's (SigLIP: 64 tokens), not "ARCH:TAG"
    model = model.eval().requires_grad_(False).to(device)
    use_self_attention(model.visual)
    size = model.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return ClipModel(name=spec, model=model, size=size, mean=torch.tensor(mean).view(1, 3, 1, 1),
                     std=torch.tensor(std).view(1, 3, 1, 1), tokenizer=open_clip.get_tokenizer(name),
                     weights=weights)


def spherical_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared great-circle distance between normalised x (N, 1, D) and y (1, P, D) -> (N, P)."""
    x = F.normalize(x, dim=-1)
    y = F.normalize(y, dim=-1)
    return (x - y).norm(dim=-1).div(2).arcsin().pow(2).mul(2)


def prompt_loss(embeds: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                position_weights: torch.Tensor) -> torch.Tensor:
    """sum_p w_p * mean_n(pos[n, p] * dist(embed_n, target_p)); negative w_p pushes away from prompt p.

    embeds (N, D), targets (P, D), weights (P,), position_weights (N, P) (rows sum to 1 for panoramas,
    all ones when every prompt applies everywhere).
    """
    d = spherical_dist(embeds[:, None, :], targets[None, :, :])
    return (d * position_weights).mean(0).mul(weights).sum()


def semantic_symmetry_loss(embeds: torch.Tensor, targets: torch.Tensor, position_weights: torch.Tensor,
                           n_pairs: int) -> torch.Tensor:
    """1 - cos(patch1 - text1, patch2 - text2) averaged over mirrored pairs (2k, 2k+1).

    Each patch's text is the position-weighted mix of the prompts' normalised embeddings.
    """
    if n_pairs <= 0:
        return embeds.new_zeros(())
    e = F.normalize(embeds[: 2 * n_pairs], dim=-1)
    t = position_weights[: 2 * n_pairs] @ F.normalize(targets, dim=-1)
    diff = e - t
    cos = F.cosine_similarity(diff[0::2], diff[1::2], dim=-1)
    return (1 - cos).mean()

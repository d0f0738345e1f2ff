"""open_clip models load from a local file through open_clip itself; tiny configs for tests."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from renderer.vqgan_clip.clip_guidance import TINY_NAME, load_clip, register_tiny_config


def test_local_weights_file_is_loaded_by_open_clip(tmp_path):
    import open_clip

    register_tiny_config()
    torch.manual_seed(5)
    src = open_clip.create_model(TINY_NAME, pretrained=None)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / f"open_clip_{TINY_NAME}-mine.safetensors"))
    clip = load_clip(f"{TINY_NAME}:mine", tmp_path, torch.device("cpu"))
    for k, v in src.state_dict().items():
        assert torch.equal(v, clip.model.state_dict()[k])
    assert clip.size == 32 and clip.weights.endswith(".safetensors")
    x = torch.rand(3, 3, 32, 32)
    emb = clip.encode_image(x)
    expected = src.encode_image((x - clip.mean) / clip.std)
    assert emb.shape == (3, 32) and torch.allclose(emb, expected, atol=1e-5)
    assert clip.encode_text(["a gate"], torch.device("cpu")).shape == (1, 32)


def test_missing_or_unknown_clip_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="open_clip_ViT-B-32-openai"):
        load_clip("ViT-B-32:openai", tmp_path, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown CLIP architecture"):
        load_clip("ViT-Nope", tmp_path, torch.device("cpu"))


def test_tokenizer_follows_the_architecture_not_the_arch_tag_string(tmp_path):
    """A model with a 64-token context (as SigLIP has) must get its own tokenizer, not the 77-token default."""
    import json

    import open_clip

    from renderer.vqgan_clip.clip_guidance import tiny_model_config

    name = "kiosk-tiny-clip-ctx64"
    if name not in open_clip.list_models():
        cfg = tiny_model_config()
        cfg["text_cfg"]["context_length"] = 64
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(cfg))
        open_clip.add_model_config(path)
    torch.manual_seed(3)
    src = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()},
              str(tmp_path / f"open_clip_{name}-mine.safetensors"))
    clip = load_clip(f"{name}:mine", tmp_path, torch.device("cpu"))
    assert clip.tokenizer(["a gate"]).shape == (1, 64)
    emb = clip.encode_text(["a gate", "a door"], torch.device("cpu"))
    assert emb.shape == (2, 32) and torch.isfinite(emb).all()

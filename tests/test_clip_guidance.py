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


def test_self_attention_is_torchs_multihead_attention_values_and_gradients() -> None:
    import copy

    from renderer.vqgan_clip.clip_guidance import SelfAttention, use_self_attention

    torch.manual_seed(2)
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_bias.normal_()
        ref.out_proj.bias.normal_()
    fast = copy.deepcopy(ref)
    assert use_self_attention(fast) == 1 and type(fast) is SelfAttention
    assert set(fast.state_dict()) == set(ref.state_dict())
    x = torch.randn(5, 7, 32, requires_grad=True)
    y = x.detach().clone().requires_grad_(True)
    a = fast(x, x, x, need_weights=False)[0]
    b = ref(y, y, y, need_weights=False)[0]
    assert (a - b).abs().max() < 1e-5
    g = torch.randn_like(a)
    (a * g).sum().backward()
    (b * g).sum().backward()
    assert (x.grad - y.grad).abs().max() < 1e-5
    assert (fast.in_proj_weight.grad - ref.in_proj_weight.grad).abs().max() < 1e-4
    # a mask, or weights wanted: torch's own path, the same answers
    mask = torch.triu(torch.full((7, 7), float("-inf")), 1)
    with torch.no_grad():
        assert torch.allclose(fast(x, x, x, attn_mask=mask, need_weights=False)[0],
                              ref(x, x, x, attn_mask=mask, need_weights=False)[0], atol=1e-6)
        wa, wb = fast(x, x, x)[1], ref(x, x, x)[1]
    assert wa is not None and torch.allclose(wa, wb)

"""CLIP vision: the layouts and how a tower's config is read from its tensors, ComfyUI's
preprocessing and output fields, the errors for what it does not run, budgets, full-size
configs on the meta device, the nodes, and parity against ComfyUI 0.3.64
(tests/fixtures/comfy_reference/clip_vision/README.md)."""

from __future__ import annotations

import json

import pytest
import torch

from latentgraph.models.clip_vision import (METADATA_KEY, ClipVision, ClipVisionConfig, clip_preprocess,
                                            config_from_keys, hf_to_openai, load_clip_vision, resized_size)
from latentgraph.models.errors import CheckpointError

TINY = ClipVisionConfig(64, 128, 3, 2, 14, 28, 32, "gelu")


def _tiny_hf(config: ClipVisionConfig = TINY, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = ClipVision(config)
    return {k[len("model."):]: v.detach().clone() for k, v in model.state_dict().items()}


def _meta(config: ClipVisionConfig = TINY) -> dict:
    return {METADATA_KEY: json.dumps(config.to_dict())}


def test_hf_and_openai_layouts_give_identical_outputs():
    sd = _tiny_hf()
    hf = load_clip_vision(sd, "hf.safetensors", metadata=_meta())
    openai = load_clip_vision(hf_to_openai(sd, "visual."), "openai.safetensors", metadata=_meta())
    unclip = load_clip_vision(hf_to_openai(sd, "embedder.model.visual."), "unclip.safetensors",
                              prefix="embedder.model.visual.", metadata=_meta())
    assert hf.config == openai.config == unclip.config == TINY
    image = torch.rand(2, 40, 60, 3, generator=torch.Generator().manual_seed(1))
    outs = [m.encode_image(image, crop=True) for m in (hf, openai, unclip)]
    for out in outs[1:]:
        for field in ("last_hidden_state", "image_embeds", "penultimate_hidden_states"):
            assert torch.equal(out[field], outs[0][field]), field
    assert outs[0].last_hidden_state.shape == (2, 5, 64)
    assert outs[0].penultimate_hidden_states.shape == (2, 5, 64)
    assert outs[0].image_embeds.shape == (2, 32)
    assert outs[0].mm_projected is None


def test_outputs_are_comfyui_hidden_states():
    """last_hidden_state: the last layer without post_layernorm; penultimate: the output of the
    layer before the last; image_embeds: projection of the post-normed class token."""
    model = load_clip_vision(_tiny_hf(), "hf", metadata=_meta())
    image = torch.rand(1, 28, 28, 3, generator=torch.Generator().manual_seed(2))
    out = model.encode_image(image)
    vm = model.model.vision_model
    with torch.no_grad():
        x = vm.pre_layrnorm(vm.embeddings(clip_preprocess(image, 28)))
        states = []
        for layer in vm.encoder.layers:
            y = layer(x, None)
            x = y[0] if isinstance(y, tuple) else y
            states.append(x)
        embeds = model.model.visual_projection(vm.post_layernorm(x[:, 0]))
    torch.testing.assert_close(out.last_hidden_state, states[-1], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.penultimate_hidden_states, states[-2], rtol=0, atol=1e-6)
    torch.testing.assert_close(out.image_embeds, embeds, rtol=0, atol=1e-6)
    assert not torch.allclose(out.last_hidden_state, out.penultimate_hidden_states)


def test_resized_size_follows_comfyui():
    assert resized_size(480, 640, 224, True) == (224, 299)  # round(640 * 224 / 480) = 298.67 -> 299
    assert resized_size(480, 640, 224, False) == (224, 224)
    assert resized_size(224, 224, 224, True) == (224, 224)
    assert resized_size(100, 250, 224, True) == (224, 560)


def test_preprocess_quantises_and_normalises():
    white = torch.ones(1, 28, 28, 3)
    px = clip_preprocess(white, 28)
    expected = [(1 - m) / s for m, s in zip((0.48145466, 0.4578275, 0.40821073),
                                            (0.26862954, 0.26130258, 0.27577711))]
    assert px.shape == (1, 3, 28, 28)
    assert torch.allclose(px[0, :, 0, 0], torch.tensor(expected))
    # an alpha channel is dropped; 0.5 becomes 128/255 (8-bit), as ComfyUI quantises
    grey = torch.full((1, 28, 28, 4), 0.5)
    assert torch.allclose(clip_preprocess(grey, 28, mean=(0, 0, 0), std=(1, 1, 1)), torch.full((1, 3, 28, 28), 128 / 255))


def test_config_rules_without_metadata():
    """Heads: 16 for the real widths, else width // 64; activation by depth (ComfyUI's rule)."""
    sd = _tiny_hf()
    cfg = config_from_keys(sd, "tiny")
    assert (cfg.num_heads, cfg.act, cfg.image_size, cfg.patch_size, cfg.projection_dim) == (1, "quick_gelu", 28, 14, 32)
    for variant, heads, act, layers in (("vit_l", 16, "quick_gelu", 24), ("vit_h", 16, "gelu", 32),
                                        ("vit_bigg", 16, "gelu", 48)):
        config = getattr(ClipVisionConfig, variant)()
        with torch.device("meta"):
            shapes = {k[len("model."):]: v for k, v in ClipVision(config).state_dict().items()}
        found = config_from_keys(shapes, variant)
        assert found == config
        assert (found.num_heads, found.act, found.num_layers, found.image_size) == (heads, act, layers, 224)


@pytest.mark.parametrize("keys, message", [
    ({"redux_up.weight": (1,), "redux_down.weight": (1,)}, "a Flux Redux image encoder"),
    ({"multi_modal_projector.linear_1.weight": (1,), "vision_model.embeddings.patch_embedding.weight": (1,)},
     "a CLIP ViT-L with a LLaVA multimodal projector"),
    ({"embeddings.cls_token": (1,), "encoder.layer.0.layer_scale1.lambda1": (1,)}, "a DINOv2 image encoder"),
    ({"vision_model.embeddings.patch_embedding.bias": (1,), "vision_model.embeddings.patch_embedding.weight": (1,)},
     "a SigLIP vision model"),
])
def test_refused_encoders_are_named(keys, message):
    sd = {k: torch.zeros(s) for k, s in keys.items()}
    with pytest.raises(CheckpointError) as err:
        load_clip_vision(sd, "enc.safetensors")
    assert str(err.value).startswith(f"enc.safetensors: {message}")
    assert "only CLIP vision models (ViT-L/14, ViT-H/14, ViT-bigG/14) are supported" in str(err.value)


def test_not_a_clip_vision_file():
    with pytest.raises(CheckpointError) as err:
        load_clip_vision({"foo.weight": torch.zeros(2)}, "x.safetensors")
    assert str(err.value) == ("x.safetensors: not a CLIP vision model: expected vision_model.* (transformers) or "
                              "conv1/transformer.resblocks.* (OpenAI/OpenCLIP, also under visual.); found 1 keys "
                              "such as foo.weight")


def test_extra_missing_and_misshapen_tensors_are_named():
    sd = _tiny_hf()
    extra = {**sd, "vision_model.extra.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match=r"^x: tensors a CLIP vision model \(hf layout\) has no place for: "
                                              r"vision_model.extra.weight$"):
        load_clip_vision(extra, "x", metadata=_meta())
    openai = hf_to_openai(sd, "visual.")
    openai["visual.transformer.resblocks.0.ls_1.gamma"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"no place for: visual.transformer.resblocks.0.ls_1.gamma$"):
        load_clip_vision(openai, "x", metadata=_meta())
    missing = {k: v for k, v in sd.items() if k != "vision_model.post_layernorm.bias"}
    with pytest.raises(CheckpointError, match="missing keys: model.vision_model.post_layernorm.bias"):
        load_clip_vision(missing, "x", metadata=_meta())
    bad = {**sd, "vision_model.encoder.layers.1.mlp.fc2.weight": torch.zeros(64, 100)}
    with pytest.raises(CheckpointError, match=r"vision_model.encoder.layers.1.mlp.fc2.weight is \(64, 100\), "
                                              r"expected \(64, 128\)"):
        load_clip_vision(bad, "x", metadata=_meta())
    grid = {**sd, "vision_model.embeddings.position_embedding.weight": torch.zeros(6, 64)}
    with pytest.raises(CheckpointError, match="the position embedding has 6 rows, not a class token plus a square"):
        load_clip_vision(grid, "x", metadata=_meta())


def test_metadata_heads_and_activation_are_checked():
    sd = _tiny_hf()
    with pytest.raises(CheckpointError, match="cannot have 3 attention heads"):
        load_clip_vision(sd, "x", metadata={METADATA_KEY: json.dumps({**TINY.to_dict(), "num_heads": 3})})
    with pytest.raises(CheckpointError, match="activation 'relu' is not gelu or quick_gelu"):
        load_clip_vision(sd, "x", metadata={METADATA_KEY: json.dumps({**TINY.to_dict(), "act": "relu"})})
    with pytest.raises(CheckpointError, match=f"its {METADATA_KEY} metadata is unreadable"):
        load_clip_vision(sd, "x", metadata={METADATA_KEY: "{"})


def test_work_shapes_are_checked_before_encoding():
    model = load_clip_vision(_tiny_hf(), "x", metadata=_meta())
    seen = []

    def check(shape, kind):
        seen.append((shape, kind))
        if kind == "a resized image batch":
            raise ValueError("over budget")

    with pytest.raises(ValueError, match="over budget"):
        model.encode_image(torch.rand(3, 10, 50, 3), crop=True, check=check)
    assert seen == [((3, 3, 28, 140), "a resized image batch")]
    with pytest.raises(ValueError, match=r"image: CLIP vision takes an IMAGE batch \(B, H, W, 3\), got shape \(1, 8, 8, 1\)"):
        model.encode_image(torch.rand(1, 8, 8, 1))

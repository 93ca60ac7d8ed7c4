"""CLIP vision: the layouts and how a tower's config is read from its tensors, ComfyUI's
preprocessing and output fields, the errors for what it does not run, budgets, full-size
configs on the meta device, the nodes, and parity against ComfyUI 0.3.64
(tests/fixtures/comfy_reference/clip_vision/README.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.cli import main as cli_main
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import read_state_dict
from latentgraph.models.clip_vision import (METADATA_KEY, VARIANTS, ClipVision, ClipVisionConfig, clip_preprocess,
                                            clip_vision_tensors, config_from_keys, hf_to_openai, load_clip_vision,
                                            load_clip_vision_file, resized_size, to_hf_layout)
from latentgraph.models.errors import CheckpointError
from latentgraph.nodes import create_registry
from conftest import FIXTURES

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
    plain = clip_preprocess(grey, 28, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(plain, torch.full((1, 3, 28, 28), 128 / 255))


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
    # ViT-L/14 at 336 pixels (577 positions): ComfyUI's vitl_336 config, quick_gelu at 336
    with torch.device("meta"):
        shapes = {k[len("model."):]: v for k, v in ClipVision(ClipVisionConfig(image_size=336)).state_dict().items()}
    assert config_from_keys(shapes, "336") == ClipVisionConfig(image_size=336)


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


def test_files_of_other_kinds_are_named():
    style = (r"^s.safetensors: a T2I style model \(style_embedding\), not a CLIP vision model: it loads with "
             r"StyleModelLoader from models/style_models$")
    with pytest.raises(CheckpointError, match=style):
        load_clip_vision({"style_embedding": torch.zeros(1, 8, 64), "proj": torch.zeros(64, 32)}, "s.safetensors")
    with pytest.raises(CheckpointError, match=r"^c.safetensors: a Stable Diffusion checkpoint, not a CLIP vision "):
        load_clip_vision({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, "c.safetensors")


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
    with pytest.raises(ValueError, match=r"image: CLIP vision takes an IMAGE batch \(B, H, W, 3\), "
                                         r"got shape \(1, 8, 8, 1\)"):
        model.encode_image(torch.rand(1, 8, 8, 1))


# -- parity with ComfyUI 0.3.64 (tests/fixtures/comfy_reference/clip_vision) -------------------
CV = FIXTURES / "comfy_reference" / "clip_vision"
REF = load_file(CV / "clip_vision_ref.safetensors")
FILES = {"l": "tiny_clip_vision_l.safetensors", "h": "tiny_clip_vision_h_openclip.safetensors"}
PICTURES = {"l": "cv_wide.png", "h": "cv_tall.png"}


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """Within 1e-4 of the reference's largest magnitude (the issue's tolerance)."""
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, f"relative error {err:.2e}"


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip_vision")
    (root / "models" / "clip_vision").mkdir(parents=True)
    (root / "in").mkdir()
    for name in FILES.values():
        shutil.copy(CV / name, root / "models" / "clip_vision" / name)
    for name in PICTURES.values():
        shutil.copy(CV / name, root / "in" / name)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


@pytest.mark.parametrize("tower", ["l", "h"])
@pytest.mark.parametrize("crop", ["center", "none"])
def test_encode_matches_comfyui(executor, tower, crop):
    wf = Workflow()
    wf.add("cv", "CLIPVisionLoader", clip_name=FILES[tower])
    wf.add("img", "LoadImage", image=PICTURES[tower])
    wf.add("enc", "CLIPVisionEncode", clip_vision="cv", image="img.IMAGE", crop=crop)
    out = executor.run(wf, targets=["enc"]).get("enc")
    for field in ("last_hidden_state", "penultimate_hidden_states", "image_embeds"):
        _close(out[field], REF[f"encode/{tower}_{crop}/{field}"])


def test_crop_modes_differ_in_the_reference():
    # a test passing on one crop mode would not prove the other is implemented
    a, b = REF["encode/l_center/last_hidden_state"], REF["encode/l_none/last_hidden_state"]
    assert (a - b).abs().max() > 1e-2 * a.abs().max()


def test_encode_budget_names_the_limit():
    """A 4 x 1 x 20000 batch would be resized to 224 x 4,480,000 before the crop: refused first,
    with the node's message (nodes/clip_vision._budget is what CLIPVisionEncode passes)."""
    from latentgraph.nodes.clip_vision import _budget

    model = load_clip_vision_file(CV / FILES["l"])
    image = torch.zeros(4, 1, 20000, 3)
    with pytest.raises(ValueError) as err:
        model.encode_image(image, check=_budget(image))
    assert str(err.value) == ("CLIP vision encoding of an image batch of 4 x 20000 x 1 makes a resized image batch "
                              "of 44.9 GiB, which exceeds the limit tensor_bytes = 8 GiB")
    # squashed ("none"), the same batch is small and encodes
    assert model.encode_image(image, crop=False, check=_budget(image)).image_embeds.shape == (4, 32)


# -- files: make-checkpoint, full sizes, published key sets ------------------------------------
def test_make_checkpoint_writes_the_committed_fixtures(tmp_path):
    for args, name in ((["--family", "sd15", "--variant", "vit-l", "--seed", "0"], FILES["l"]),
                       (["--family", "sd2", "--variant", "vit-h", "--layout", "openclip", "--seed", "1"], FILES["h"])):
        out = tmp_path / name
        assert cli_main(["make-checkpoint", str(out), "--kind", "clip_vision", *args]) == 0
        assert out.read_bytes() == (CV / name).read_bytes()
    sd, meta = read_state_dict(CV / FILES["h"])
    assert json.loads(meta[METADATA_KEY]) == {**TINY.to_dict(), "num_layers": 3, "num_heads": 2, "act": "gelu",
                                              "image_size": 224, "projection_dim": 32}
    assert sorted(k for k in sd if not k.startswith("visual.transformer.")) == [
        "visual.class_embedding", "visual.conv1.weight", "visual.ln_post.bias", "visual.ln_post.weight",
        "visual.ln_pre.bias", "visual.ln_pre.weight", "visual.positional_embedding", "visual.proj"]


def test_make_checkpoint_errors(tmp_path, capsys):
    out = str(tmp_path / "x.safetensors")
    assert cli_main(["make-checkpoint", out, "--kind", "clip_vision", "--family", "sd15", "--variant", "xl"]) != 0
    assert "--variant xl is for --kind t2i_adapter; CLIP vision variants are vit-l, vit-h, vit-bigg" in \
        capsys.readouterr().err
    assert cli_main(["make-checkpoint", out, "--kind", "gligen", "--family", "sd15", "--layout", "hf"]) != 0
    assert "--layout is for --kind clip_vision" in capsys.readouterr().err
    assert cli_main(["make-checkpoint", out, "--kind", "clip_vision", "--family", "sd15", "--prediction", "v"]) != 0
    assert "--prediction is for checkpoints; a CLIP vision model has none" in capsys.readouterr().err


def _published_hf_keys(layers: int) -> set[str]:
    """The keys of a transformers CLIPVisionModelWithProjection file (e.g. the IP-Adapter
    image_encoder / CLIP-ViT-H-14-laion2B-s32B-b79K vision tower)."""
    keys = {"vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.position_embedding.weight", "visual_projection.weight"}
    keys |= {f"vision_model.{n}.{p}" for n in ("pre_layrnorm", "post_layernorm") for p in ("weight", "bias")}
    for i in range(layers):
        for sub in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                    "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"vision_model.encoder.layers.{i}.{sub}.weight", f"vision_model.encoder.layers.{i}.{sub}.bias"}
    return keys


def _published_openclip_keys(layers: int) -> set[str]:
    """The vision keys of an OpenCLIP/OpenAI file (open_clip_pytorch_model.bin: ``visual.*``)."""
    keys = {"visual.class_embedding", "visual.positional_embedding", "visual.proj", "visual.conv1.weight"}
    keys |= {f"visual.{n}.{p}" for n in ("ln_pre", "ln_post") for p in ("weight", "bias")}
    for i in range(layers):
        keys |= {f"visual.transformer.resblocks.{i}.attn.in_proj_weight",
                 f"visual.transformer.resblocks.{i}.attn.in_proj_bias"}
        for sub in ("attn.out_proj", "ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj"):
            keys |= {f"visual.transformer.resblocks.{i}.{sub}.weight", f"visual.transformer.resblocks.{i}.{sub}.bias"}
    return keys


@pytest.mark.parametrize("variant, layers, width, proj", [("vit-l", 24, 1024, 768), ("vit-h", 32, 1280, 1024),
                                                           ("vit-bigg", 48, 1664, 1280)])
def test_full_size_files_have_the_published_keys_and_load_with_the_right_config(variant, layers, width, proj):
    """Shapes only (meta device): what make-checkpoint --size full writes, in both layouts, read back."""
    config = VARIANTS[variant]()
    with torch.device("meta"):
        model = ClipVision(config)
    hf = clip_vision_tensors(model, "hf")
    openclip = clip_vision_tensors(model, "openclip")
    assert set(hf) == _published_hf_keys(layers)
    assert set(openclip) == _published_openclip_keys(layers)
    assert tuple(openclip["visual.proj"].shape) == (width, proj)
    assert tuple(openclip["visual.positional_embedding"].shape) == (257, width)
    for sd in (hf, openclip):  # no metadata: ComfyUI's rules by depth and width
        found = config_from_keys(to_hf_layout(sd, variant)[0], variant)
        assert found == config
    assert (config.num_heads, config.act) == (16, "quick_gelu" if variant == "vit-l" else "gelu")


# variant, layout, seed, picture, crop, sha256 of the fp16 file make-checkpoint writes
FULL = {"vitl": ("vit-l", "hf", 5, "cv_wide.png", True,
                 "0430124781a90714e393c852ae2e548641ca14c697f463aaec2483ee246588b6"),
        "vith": ("vit-h", "openclip", 6, "cv_tall.png", False,
                 "df9c72f4fc3ad439425f413b2c642e3e4bd69b42a4b5a8d2bf91a6ee1cb24930")}


@pytest.mark.slow
@pytest.mark.parametrize("name", FULL)
def test_full_size_matches_comfyuis_stock_loader(tmp_path, name):
    """Full-size random towers (make-checkpoint --size full, fp16: ViT-L/14 608 MB in the transformers
    layout, ViT-H/14 1.26 GB in the OpenCLIP layout), read by ComfyUI's own CLIPVisionLoader (its
    ViT-L and ViT-H json configs) and by ours without the metadata (our rules by shape), encode alike."""
    import hashlib

    import numpy as np
    from PIL import Image

    from latentgraph.models.make import make_clip_vision

    variant, layout, seed, picture, crop, sha256 = FULL[name]
    path = tmp_path / f"{name}.safetensors"
    make_clip_vision(path, variant, "full", seed=seed, dtype="fp16", layout=layout)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sha256, "the random weights changed (torch/transformers init?): rerun the oracle"
    sd, _ = read_state_dict(path)
    model = load_clip_vision(sd, str(path), metadata=None, dtype=torch.float32)
    del sd
    assert model.config == VARIANTS[variant]()
    ref = load_file(CV / f"full_{name}_ref.safetensors")
    pixels = np.asarray(Image.open(CV / picture).convert("RGB"), dtype=np.float32) / 255  # as LoadImage
    out = model.encode_image(torch.from_numpy(pixels)[None], crop=crop)
    _close(out.image_embeds, ref["image_embeds"])
    _close(out.last_hidden_state[:, :16], ref["last_hidden_state_first16"])
    _close(out.penultimate_hidden_states[:, :16], ref["penultimate_hidden_states_first16"])


def test_half_precision_load_encodes_close_to_float32():
    image = torch.rand(1, 60, 40, 3, generator=torch.Generator().manual_seed(4))
    ref = load_clip_vision_file(CV / FILES["l"]).encode_image(image)
    for dtype in (torch.float16, torch.bfloat16):
        model = load_clip_vision_file(CV / FILES["l"], dtype)
        assert model.model.visual_projection.weight.dtype == dtype
        out = model.encode_image(image)
        assert out.image_embeds.dtype == torch.float32  # outputs come back float32 on the CPU
        assert float((out.image_embeds - ref.image_embeds).abs().max() / ref.image_embeds.abs().max()) < 0.05

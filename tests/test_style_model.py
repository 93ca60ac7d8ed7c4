"""Style models (T2I style adapter): the file layout and loader, StyleModelApply's conditioning
(multiply, attn_bias and its attention mask), and whole sampling runs against ComfyUI 0.3.64 on
the tiny SD1 checkpoint (tests/fixtures/comfy_reference/clip_vision/README.md)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.cli import main as cli_main
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import read_state_dict
from latentgraph.models.clip_vision import ClipVisionOutput
from latentgraph.models.errors import CheckpointError
from latentgraph.models.style_model import (METADATA_KEY, StyleAdapter, StyleAdapterConfig, load_style_model,
                                            load_style_model_file, style_tensors)
from latentgraph.nodes import create_registry
from latentgraph.nodes.clip_vision import apply_style
from conftest import FIXTURES
from test_sampling_parity import _with_metadata

REF_DIR = FIXTURES / "comfy_reference"
CV = REF_DIR / "clip_vision"
REF = load_file(CV / "clip_vision_ref.safetensors")
STYLE = CV / "tiny_style_sd15.safetensors"


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("style")
    for sub in ("checkpoints", "clip_vision", "style_models"):
        (root / "models" / sub).mkdir(parents=True)
    (root / "in").mkdir()
    _with_metadata(REF_DIR / "tiny_sd15.safetensors", root / "models" / "checkpoints" / "tiny_sd15.safetensors",
                   {"unet_num_heads": 8, "text_num_heads": 2})
    shutil.copy(CV / "tiny_clip_vision_l.safetensors", root / "models" / "clip_vision")
    shutil.copy(STYLE, root / "models" / "style_models")
    shutil.copy(CV / "cv_wide.png", root / "in")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def _graph() -> Workflow:
    wf = Workflow()
    wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    wf.add("cv", "CLIPVisionLoader", clip_name="tiny_clip_vision_l.safetensors")
    wf.add("img", "LoadImage", image="cv_wide.png")
    wf.add("center", "CLIPVisionEncode", clip_vision="cv", image="img.IMAGE", crop="center")
    wf.add("none", "CLIPVisionEncode", clip_vision="cv", image="img.IMAGE", crop="none")
    wf.add("style", "StyleModelLoader", style_model_name=STYLE.name)
    wf.add("pos", "CLIPTextEncode", clip="ckpt.CLIP", text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip="ckpt.CLIP", text="blurry")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("st_mul", "StyleModelApply", conditioning="pos", style_model="style", clip_vision_output="center",
           strength=0.6, strength_type="multiply")
    wf.add("st_bias", "StyleModelApply", conditioning="pos", style_model="style", clip_vision_output="none",
           strength=0.5, strength_type="attn_bias")
    wf.add("st_neg", "StyleModelApply", conditioning="neg", style_model="style", clip_vision_output="center",
           strength=2.0, strength_type="multiply")
    return wf


def _close(out, ref):
    """Within 1e-4 of the reference's largest magnitude (the issue's tolerance)."""
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    assert err < 1e-4, f"relative error {err:.2e}"


@pytest.mark.parametrize("name, positive, negative", [
    ("style_multiply", "st_mul", "neg"), ("style_attn_bias", "st_bias", "neg"), ("style_both", "st_mul", "st_neg"),
    ("plain", "pos", "neg")])
def test_sampling_with_a_style_model_matches_comfyui(executor, name, positive, negative):
    wf = _graph()
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=42, steps=4, cfg=5.0, sampler_name="euler",
           scheduler="normal", positive=positive, negative=negative, latent_image="empty", denoise=1.0)
    _close(executor.run(wf, targets=["k"]).get("k")["samples"], REF[f"sample/{name}"])


def test_the_style_changes_the_picture():
    plain = REF["sample/plain"]
    for name in ("style_multiply", "style_attn_bias", "style_both"):
        assert (REF[f"sample/{name}"] - plain).abs().max() > 1e-2 * plain.abs().max()


def _output(batch: int, width: int = 64) -> ClipVisionOutput:
    hidden = torch.randn(batch, 257, width, generator=torch.Generator().manual_seed(3))
    return ClipVisionOutput(hidden, torch.zeros(batch, 32), hidden)


def test_apply_multiply_scales_and_appends_every_image():
    model = load_style_model_file(STYLE)
    tokens = model.get_cond(_output(2))
    assert tokens.shape == (2, 8, 32)
    txt = torch.randn(1, 77, 32)
    (out_txt, opts), = apply_style([[txt, {"pooled_output": 1}]], tokens, 0.25, "multiply")
    assert out_txt.shape == (1, 77 + 16, 32)
    assert torch.equal(out_txt[:, :77], txt)
    assert torch.allclose(out_txt[0, 77:], 0.25 * tokens.flatten(0, 1))
    assert opts == {"pooled_output": 1}


def test_attn_bias_keeps_the_tokens_and_adds_comfyuis_mask():
    tokens = torch.randn(1, 8, 32)
    txt = torch.randn(1, 77, 32)
    (same_txt, same_opts), = apply_style([[txt, {}]], tokens, 1.0, "attn_bias")
    assert "attention_mask" not in same_opts  # strength 1 and no mask before: nothing to record
    (out_txt, opts), = apply_style([[txt, {}]], tokens, 0.5, "attn_bias")
    assert torch.equal(out_txt, same_txt)  # the tokens are not scaled
    mask = opts["attention_mask"]
    assert mask.shape == (1, 86, 86) and mask.dtype == torch.float16  # 77 text + 8 style + 1 reference token
    bias = torch.tensor(math.log(0.5), dtype=torch.float16)
    assert torch.equal(mask[:, :77, 77:85], bias.expand(1, 77, 8))
    assert torch.equal(mask[:, 85:, 77:85], bias.expand(1, 1, 8))
    assert int((mask != 0).sum()) == 78 * 8
    assert opts["attention_mask_img_shape"] == (1, 1)
    # a second style on top grows the mask, keeping the first one's bias; strength 0 is -inf
    (_, opts2), = apply_style([[out_txt, opts]], tokens, 0.0, "attn_bias")
    mask2 = opts2["attention_mask"]
    assert mask2.shape == (1, 94, 94)
    assert torch.equal(mask2[:, :77, 77:85], bias.expand(1, 77, 8))
    assert torch.isneginf(mask2[:, :85, 85:93].float()).all()
    assert int((mask2[:, :85, :85] != mask[:, :85, :85]).sum()) == 0


def test_apply_refuses_mismatched_widths():
    with pytest.raises(ValueError, match=r"style_model: its tokens are 32 wide, the conditioning's are 768 \(the "
                                         r"published style adapter is for SD1.x, 768 wide\)"):
        apply_style([[torch.zeros(1, 77, 768), {}]], torch.zeros(1, 8, 32), 1.0, "multiply")
    model = load_style_model_file(STYLE)
    with pytest.raises(ValueError, match="this style model reads 64-wide CLIP vision tokens, the output is 1024 wide"):
        model.get_cond(_output(1, 1024))


def test_loader_errors_name_what_was_found():
    sd, meta = read_state_dict(STYLE)
    with pytest.raises(CheckpointError, match=r"^x: a Flux Redux style model \(redux_up/redux_down\): it is for Flux"):
        load_style_model({"redux_up.weight": torch.zeros(4, 4), "redux_down.weight": torch.zeros(4, 4)}, "x")
    with pytest.raises(CheckpointError, match="^x: a CLIP vision model, not a style model: it loads with "
                                              "CLIPVisionLoader from models/clip_vision$"):
        load_style_model(read_state_dict(CV / "tiny_clip_vision_l.safetensors")[0], "x")
    with pytest.raises(CheckpointError, match="^x: not a style model: no style_embedding tensor"):
        load_style_model({"foo": torch.zeros(1)}, "x")
    with pytest.raises(CheckpointError, match=r"style_embedding \(1, 8, 64\) and proj \(32, 32\) do not fit"):
        load_style_model({**sd, "proj": torch.zeros(32, 32)}, "x", meta)
    missing = {k: v for k, v in sd.items() if k != "ln_post.bias"}
    with pytest.raises(CheckpointError, match="missing keys: ln_post.bias"):
        load_style_model(missing, "x", meta)
    with pytest.raises(CheckpointError, match="a style adapter 64 wide cannot have 3 attention heads"):
        load_style_model(sd, "x", {METADATA_KEY: json.dumps({"num_heads": 3})})
    bad = {**sd, "transformer_layes.1.mlp.c_fc.weight": torch.zeros(256, 65)}
    with pytest.raises(CheckpointError, match=r"transformer_layes.1.mlp.c_fc.weight is \(256, 65\), "
                                              r"expected \(256, 64\)"):
        load_style_model(bad, "x", meta)


def test_make_checkpoint_writes_the_committed_fixture(tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert cli_main(["make-checkpoint", str(out), "--kind", "style_model", "--family", "sd15", "--seed", "2"]) == 0
    assert out.read_bytes() == STYLE.read_bytes()
    assert cli_main(["make-checkpoint", str(out), "--kind", "style_model", "--family", "sdxl"]) != 0
    assert "style models are made for sd15 (the published one is SD1.x), not 'sdxl'" in capsys.readouterr().err
    model = load_style_model_file(STYLE)
    assert model.config == StyleAdapterConfig(64, 32, 8, 3, 8)


def test_full_size_is_the_published_layout():
    """Shapes only (meta device): t2iadapter_style_sd14v1 reads ViT-L/14 (1024) into 8 tokens of 768."""
    with torch.device("meta"):
        sd = style_tensors(StyleAdapter(StyleAdapterConfig()))
    assert len(sd) == 6 + 3 * 12  # style_embedding, proj, ln_pre, ln_post; 12 per layer
    assert tuple(sd["style_embedding"].shape) == (1, 8, 1024)
    assert tuple(sd["proj"].shape) == (1024, 768)
    assert tuple(sd["transformer_layes.2.attn.in_proj_weight"].shape) == (3072, 1024)
    assert tuple(sd["transformer_layes.0.mlp.c_fc.weight"].shape) == (4096, 1024)
    from latentgraph.models.style_model import config_from_keys

    assert config_from_keys(sd, "published") == StyleAdapterConfig()  # 8 heads without metadata, as ComfyUI


def test_half_precision_weights_run():
    """fp16/bf16 files (or --dtype fp16 on CUDA): the float32 norms take half weights; close to fp32."""
    full = load_style_model_file(STYLE)
    out = _output(1)
    ref = full.get_cond(out)
    for dtype in (torch.float16, torch.bfloat16):
        half = load_style_model_file(STYLE, dtype)
        assert half.proj.dtype == dtype
        got = half.get_cond(out)
        assert got.dtype == torch.float32
        assert float((got - ref).abs().max() / ref.abs().max()) < 0.05


def test_ui_workflow_converts_as_comfyuis_frontend_and_runs(executor):
    """style_model_example.ui.json (UI format; its .api.json is what ComfyUI 0.3.64's frontend
    1.27.10 queued for it): converted here to the same prompt, run end to end on the tiny models,
    its KSampler giving ComfyUI's style_multiply latent (the same graph)."""
    from latentgraph.graph.ui_format import ui_to_api
    from test_ui_format import meaning

    ui = json.loads((CV / "style_model_example.ui.json").read_text())
    want = json.loads((CV / "style_model_example.api.json").read_text())
    got = ui_to_api(ui, executor.registry, source="style_model_example.ui.json")
    assert meaning(got) == meaning(want)
    assert len(got) == 12 and got["24"]["class_type"] == "StyleModelApply"  # the Note is dropped
    result = executor.run(Workflow.from_api(want), targets=["3", "9"])
    _close(result.get("3")["samples"], REF["sample/style_multiply"])
    assert [img["filename"] for img in result.outputs["9"]["images"]] == ["style_model_00001_.png"]

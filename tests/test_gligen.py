"""GLIGEN: the file layout and loader, the position net's box encoding, the nodes'
declarations, and whole sampling runs against ComfyUI 0.3.64 on the tiny SD1 checkpoint
(tests/fixtures/comfy_reference/gligen/README.md)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.checkpoint import CheckpointError, read_state_dict
from latentgraph.models.gligen import MAX_OBJS, fourier_features, load_gligen_file
from latentgraph.models.make import make_gligen
from latentgraph.nodes import create_registry
from latentgraph.sampling.guidance import Cond, gligen_to_uncond
from conftest import FIXTURES
from test_sampling_parity import _with_metadata

REF = FIXTURES / "comfy_reference"
GL = REF / "gligen"
GLIGEN_REF = load_file(GL / "gligen_ref.safetensors")
TINY = GL / "tiny_gligen_sd15.safetensors"


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("gligen")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "gligen").mkdir(parents=True)
    _with_metadata(REF / "tiny_sd15.safetensors", root / "models" / "checkpoints" / "tiny_sd15.safetensors",
                   {"unet_num_heads": 8, "text_num_heads": 2})
    shutil.copy(TINY, root / "models" / "gligen" / TINY.name)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def _box(wf, name, cond, text, w, h, x, y):
    wf.add(name, "GLIGENTextBoxApply", conditioning_to=cond, clip="ckpt.CLIP", gligen_textbox_model="gl.GLIGEN",
           text=text, width=w, height=h, x=x, y=y)


def _graph(batch=1) -> Workflow:
    wf = Workflow()
    wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="tiny_sd15.safetensors")
    wf.add("gl", "GLIGENLoader", gligen_name=TINY.name)
    wf.add("pos", "CLIPTextEncode", clip="ckpt.CLIP", text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip="ckpt.CLIP", text="blurry")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=batch)
    _box(wf, "box1", "pos.CONDITIONING", "a cat", 32, 32, 0, 16)
    _box(wf, "box2", "box1.CONDITIONING", "a dog", 24, 40, 32, 8)
    _box(wf, "negbox", "neg.CONDITIONING", "a tree", 16, 16, 48, 48)
    return wf


def _sample(executor, positive, negative="neg", batch=1):
    wf = _graph(batch)
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=42, steps=4, cfg=5.0, sampler_name="euler",
           scheduler="normal", positive=positive, negative=negative, latent_image="empty", denoise=1.0)
    return executor.run(wf, targets=["k"]).get("k")["samples"]


def _close(out, ref):
    """Within 1e-4 of the reference's largest magnitude (the issue's tolerance)."""
    assert out.shape == ref.shape
    err = float((out - ref).abs().max() / ref.abs().max())
    print(f"relative error {err:.2e}")
    assert err < 1e-4, f"relative error {err:.2e}"


@pytest.mark.parametrize("name,positive,negative,batch", [
    ("one", "box1", "neg", 1), ("two", "box2", "neg", 1), ("batch", "box1", "neg", 2),
    ("negbox", "box1", "negbox", 1), ("plain", "pos", "neg", 1)])
def test_sampling_with_boxes_matches_comfyui(executor, name, positive, negative, batch):
    _close(_sample(executor, positive, negative, batch), GLIGEN_REF[f"sample/{name}"])


def test_the_boxes_change_the_picture():
    # the references differ: a test passing on "plain" would not prove the boxes were applied
    plain = GLIGEN_REF["sample/plain"]
    for name in ("one", "two", "negbox"):
        assert (GLIGEN_REF[f"sample/{name}"] - plain).abs().max() > 1e-2 * plain.abs().max()


def test_make_gligen_is_the_committed_fixture(tmp_path):
    out = tmp_path / "g.safetensors"
    make_gligen(out, "sd15", "tiny", seed=7)
    assert out.read_bytes() == TINY.read_bytes()
    sd, meta = read_state_dict(out)
    assert json.loads(meta["latentgraph.gligen"]) == {"heads": 8}
    fusers = sorted({k.split(".fuser.")[0] for k in sd if ".fuser." in k})
    assert fusers == ["input_blocks.1.1.transformer_blocks.0", "input_blocks.3.1.transformer_blocks.0",
                      "middle_block.1.transformer_blocks.0"] + \
        [f"output_blocks.{i}.1.transformer_blocks.0" for i in range(4)]
    assert sd["position_net.linears.0.weight"].shape == (512, 32 + 64)
    assert sd["input_blocks.1.1.transformer_blocks.0.fuser.alpha_attn"].shape == ()


def test_full_size_layout_is_the_published_one():
    """Shapes only (meta device): SD1's 16 transformer blocks, 768-wide text, 8 heads by ComfyUI's rule."""
    from latentgraph.models.families import full_architecture
    from latentgraph.models.gligen import GLIGEN
    from latentgraph.models.unet import BasicTransformerBlock, UNetModel

    with torch.device("meta"):
        names = [n for n, m in UNetModel(full_architecture("sd15").unet).named_modules()
                 if isinstance(m, BasicTransformerBlock)]
        sd = {f"{n}.fuser.linear.weight": torch.empty(320, 768) for n in names}
        sd["position_net.null_positive_feature"] = torch.empty(768)
        sd["position_net.linears.4.weight"] = torch.empty(768, 512)
        g = GLIGEN(sd)
    assert len(names) == 16 and names[0] == "input_blocks.1.1.transformer_blocks.0"
    assert names[-1] == "output_blocks.11.1.transformer_blocks.0"
    assert [f.attn.heads for f in g.fusers] == [8] * 16 and g.fusers[0].attn.dim_head == 40


def test_fourier_features_order():
    boxes = torch.tensor([[0.25, 0.5, 0.75, 1.0]])
    f = fourier_features(boxes)
    assert f.shape == (1, 64)
    band1 = 100 ** (1 / 8)
    torch.testing.assert_close(f[0, :4], torch.sin(boxes[0]))
    torch.testing.assert_close(f[0, 4:8], torch.cos(boxes[0]))
    torch.testing.assert_close(f[0, 8:12], torch.sin(band1 * boxes[0]))


def test_box_coordinates_and_padding():
    g = load_gligen_file(TINY)
    seen = {}
    net = g.position_net
    orig = net.forward

    def spy(boxes, masks, embeddings):
        seen.update(boxes=boxes, masks=masks, embeddings=embeddings)
        return orig(boxes, masks, embeddings)

    net.forward = spy
    pooled = torch.arange(32, dtype=torch.float32)[None]
    g.position_patch(torch.Size((2, 4, 8, 16)), [(pooled, 4, 8, 2, 4)])
    assert seen["boxes"].shape == (2, MAX_OBJS, 4)
    torch.testing.assert_close(seen["boxes"][1, 0], torch.tensor([4 / 16, 2 / 8, 12 / 16, 6 / 8]))
    assert seen["boxes"][:, 1:].abs().sum() == 0
    assert seen["masks"][0].tolist() == [1.0] + [0.0] * (MAX_OBJS - 1)
    torch.testing.assert_close(seen["embeddings"][0, 0], pooled[0])


def test_too_many_boxes_and_wrong_widths_are_errors():
    g = load_gligen_file(TINY)
    box = (torch.zeros(1, 32), 1, 1, 0, 0)
    with pytest.raises(ValueError, match="at most 30 boxes per conditioning entry, got 31"):
        g.position_patch(torch.Size((1, 4, 8, 8)), [box] * 31)
    with pytest.raises(ValueError, match="a GLIGEN box phrase is 768 wide; this GLIGEN takes 32-wide"):
        g.position_patch(torch.Size((1, 4, 8, 8)), [(torch.zeros(1, 768), 1, 1, 0, 0)])
    patch = g.position_patch(torch.Size((1, 4, 8, 8)), [box])
    with pytest.raises(ValueError, match=r"does not fit the model: its 7 fusers do not match transformer #7"):
        patch(torch.zeros(1, 64, 32), {"transformer_index": 7})
    with pytest.raises(ValueError, match=r"transformer #0 \(48 wide, fuser: 32\)"):
        patch(torch.zeros(1, 64, 48), {"transformer_index": 0})


def test_bad_files_name_the_file(tmp_path):
    sd = load_file(TINY)
    bad = tmp_path / "nopos.safetensors"
    save_file({k: v for k, v in sd.items() if not k.startswith("position_net.")}, str(bad))
    with pytest.raises(CheckpointError, match=r"nopos.safetensors: cannot load as a GLIGEN: no position_net"):
        load_gligen_file(bad)
    extra = tmp_path / "extra.safetensors"
    save_file({**sd, "input_blocks.1.1.transformer_blocks.0.fuser.extra": torch.zeros(1)}, str(extra),
              metadata={"latentgraph.gligen": json.dumps({"heads": 8})})
    with pytest.raises(CheckpointError, match=r"extra.safetensors.*fuser\.extra"):
        load_gligen_file(extra)


def test_negative_gets_the_positive_boxes_unless_it_has_its_own():
    ctx = torch.zeros(1, 77, 32)
    a, b = ("gl", ["a"]), ("gl", ["b"])
    pos = [Cond(ctx, gligen=a), Cond(ctx, gligen=b, area=(4, 4, 0, 0))]
    neg = gligen_to_uncond(pos, [Cond(ctx), Cond(ctx, area=(4, 4, 0, 0))])
    assert neg[0].gligen is a and neg[1].gligen is None
    own = [Cond(ctx, gligen=b)]
    assert gligen_to_uncond(pos, own) is own


def test_node_declarations_match_comfyui():
    info = create_registry().object_info()
    box = info["GLIGENTextBoxApply"]
    assert box["input_order"]["required"] == ["conditioning_to", "clip", "gligen_textbox_model", "text",
                                              "width", "height", "x", "y"]
    req = box["input"]["required"]
    assert req["text"] == ["STRING", {"multiline": True, "dynamicPrompts": True}]
    assert req["width"] == ["INT", {"default": 64, "min": 8, "max": 16384, "step": 8}]
    assert req["x"] == ["INT", {"default": 0, "min": 0, "max": 16384, "step": 8}]
    assert box["category"] == "conditioning/gligen" and box["output"] == ["CONDITIONING"]
    loader = info["GLIGENLoader"]
    assert loader["category"] == "loaders" and loader["output"] == ["GLIGEN"]
    assert loader["input_order"]["required"] == ["gligen_name"]


def test_boxes_patch_follows_the_models_own_and_its_entry_runs_alone():
    from latentgraph.sampling.guidance import calc_cond_batch

    g = load_gligen_file(TINY)
    calls = []

    def apply_model(x, sigma, c_crossattn, transformer_options):
        patches = transformer_options.get("patches", {}).get("middle_patch", [])
        calls.append((x.shape[0], [p.__name__ for p in patches], transformer_options["cond_or_uncond"]))
        return torch.zeros_like(x)

    def own(x, extra_options):
        return x

    options = {"transformer_options": {"patches": {"middle_patch": [own]}}}
    ctx = torch.zeros(1, 77, 32)
    pos = [Cond(ctx, gligen=(g, [(torch.zeros(1, 32), 4, 4, 0, 0)]))]
    calc_cond_batch(apply_model, [pos, [Cond(ctx)]], torch.zeros(2, 4, 8, 8), torch.ones(2), options)
    assert sorted(calls) == [(2, ["own"], [1]), (2, ["own", "gligen_middle_patch"], [0])]
    assert options["transformer_options"]["patches"]["middle_patch"] == [own]  # the model's options unchanged


def test_make_checkpoint_cli_kind_gligen(tmp_path, capsys):
    from latentgraph.cli import main

    out = tmp_path / "g.safetensors"
    assert main(["make-checkpoint", "--kind", "gligen", "--family", "sd15", "--seed", "7", str(out)]) == 0
    assert "sd15 GLIGEN (tiny, fp32), 2.6 MB" in capsys.readouterr().out
    assert out.read_bytes() == TINY.read_bytes()
    assert main(["make-checkpoint", "--kind", "gligen", "--family", "sdxl", str(tmp_path / "x.safetensors")]) == 1
    assert "GLIGEN files are made for sd15 (the published ones are SD1.x), not 'sdxl'" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()

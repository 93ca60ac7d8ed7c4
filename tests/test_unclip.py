"""unCLIP and SDXL Revision: the noise-augmented image-embedding vector and whole sampling runs
against ComfyUI 0.3.64 references (tests/fixtures/comfy_reference/unclip/README.md), the
SD2.1-unCLIP checkpoints (loading, detection, what is still refused), the nodes and their
errors, and make-checkpoint --family sd21_unclip_l/h."""

from __future__ import annotations

import json
from typing import Annotated

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Environment, Executor, String, Workflow, node
from latentgraph.models.clip_vision import ClipVisionOutput
from latentgraph.models.errors import CheckpointError
from latentgraph.models.unclip import noise_level, schedule_buffers, unclip_adm
from latentgraph.nodes import create_registry
from latentgraph.nodes.clip_vision import CLIP_VISION_OUTPUT
from conftest import FIXTURES
from unclip_fixtures import make_revision_refiner, make_revision_sdxl, make_unclip_l

REF = FIXTURES / "comfy_reference" / "unclip"
ADM = load_file(REF / "adm_ref.safetensors")
SAMPLES = load_file(REF / "unclip_ref.safetensors")
INPUTS = load_file(REF / "inputs.safetensors")


def output(embeds: torch.Tensor) -> ClipVisionOutput:
    return ClipVisionOutput(last_hidden_state=embeds[:, None], image_embeds=embeds,
                            penultimate_hidden_states=embeds[:, None])


# -- the vector, against ComfyUI's comfy.model_base.unclip_adm ---------------------------------
# name: (width, [(rows of the embeddings, strength, noise_augmentation)], seed, merge level)
ADM_CASES = {
    "d32_s1_a0_seed0": (32, [((0,), 1.0, 0.0)], 0, 0.05),
    "d32_s1_a03_seed42": (32, [((0,), 1.0, 0.3)], 42, 0.05),
    "d32_s07_a05_batch2_seed7": (32, [((0, 1), 0.7, 0.5)], 7, 0.05),
    "d32_chain_seed42": (32, [((0,), 1.0, 0.0), ((1,), 0.5, 0.3)], 42, 0.05),
    "d32_chain3_seed3": (32, [((0,), 1.0, 0.1), ((1, 2), -0.4, 1.0)], 3, 0.05),
    "d1024_s1_a01_seed123": (1024, [((0,), 1.0, 0.1)], 123, 0.05),
    "d1280_revision_seed42": (1280, [((0,), 1.0, 0.0)], 42, 0.0),
    "d1280_revision_chain_seed9": (1280, [((0,), 0.8, 0.2), ((1,), 1.0, 0.0)], 9, 0.0),
}


@pytest.mark.parametrize("case", sorted(ADM_CASES))
def test_adm_vector_is_comfyuis(case):
    dim, entries, seed, merge = ADM_CASES[case]
    embeds = ADM[f"embeds_{dim}"]
    conds = [{"clip_vision_output": output(embeds[list(rows)]), "strength": s, "noise_augmentation": a}
             for rows, s, a in entries]
    got = unclip_adm(conds, dim, seed, merge, "model")
    assert got.shape == (1, 2 * dim)
    # bit-equal on the Xeon the references were made on; the noise augmentation's float32 steps
    # round differently on other CPUs (up to 7e-6 apart on an AMD EPYC)
    torch.testing.assert_close(got, ADM[f"adm/{case}"], rtol=1e-5, atol=2e-5)


def test_noise_level_and_schedule_values():
    assert [noise_level(a) for a in (0.0, 0.3, 0.5, 1.0)] == [0, 300, 500, 999]  # round(299.7), round(499.5)
    buffers = schedule_buffers()
    assert sorted(buffers) == ["alphas_cumprod", "alphas_cumprod_prev", "betas", "log_one_minus_alphas_cumprod",
                               "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                               "sqrt_recipm1_alphas_cumprod"]
    assert buffers["betas"].shape == (1000,) and float(buffers["betas"][-1]) == pytest.approx(0.999)
    assert float(buffers["alphas_cumprod_prev"][0]) == 1.0


def test_adm_errors_name_the_problem():
    with pytest.raises(ValueError) as info:
        unclip_adm([{"clip_vision_output": output(torch.zeros(1, 1024)), "strength": 1.0,
                     "noise_augmentation": 0.0}], 768, 0, 0.05, "Stable Diffusion 2.1 unCLIP-L")
    assert str(info.value) == (
        "Stable Diffusion 2.1 unCLIP-L takes CLIP image embeddings 768 wide; this CLIP vision output's image_embeds "
        "are 1024 wide (a CLIP vision model of another size: unCLIP-L needs ViT-L/14 (768), unCLIP-H ViT-H/14 "
        "(1024), SDXL Revision ViT-bigG/14 (1280))")
    with pytest.raises(ValueError) as info:
        unclip_adm([], 32, 0, 0.05, "m")
    assert str(info.value) == "m: unclip_conditioning must be a non-empty list of entries"
    with pytest.raises(ValueError) as info:
        unclip_adm([{"clip_vision_output": output(torch.zeros(1, 32)), "strength": 1.0,
                     "noise_augmentation": 1.5}], 32, 0, 0.05, "m")
    assert str(info.value) == "m: unclip_conditioning entry 0: noise_augmentation 1.5 is not in [0, 1]"


# -- whole runs: the API prompts given to ComfyUI, run here ------------------------------------
@node(outputs=[CLIP_VISION_OUTPUT])
def FixtureClipVisionOutput(key: Annotated[str, String("embeds32_a")]) -> ClipVisionOutput:
    """The reference prompts' LGClipVisionOutputFromFile: image_embeds from inputs.safetensors."""
    return output(INPUTS[key])


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("unclip")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    make_unclip_l(ckpts / "lgB_tiny_unclip_l.safetensors")
    make_revision_sdxl(ckpts / "lgB_tiny_sdxl_revision.safetensors")
    make_revision_refiner(ckpts / "lgB_tiny_refiner_revision.safetensors")
    registry = create_registry()
    registry.register(FixtureClipVisionOutput)
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(registry, env)


# the oracle-only nodes of the prompts -> what a latentgraph graph uses in their place
STAND_INS = {"TinyUnclipCheckpointLoader": "unCLIPCheckpointLoader",
             "TinyRevisionCheckpointLoader": "CheckpointLoaderSimple"}


def reference_workflow(name: str) -> Workflow:
    prompt = json.loads((REF / f"{name}.api.json").read_text())
    del prompt["save"]
    for entry in prompt.values():
        if entry["class_type"] == "LGClipVisionOutputFromFile":
            entry["class_type"], entry["inputs"] = "FixtureClipVisionOutput", {"key": entry["inputs"]["key"]}
        if entry["class_type"] in STAND_INS:  # our loaders take the file name only
            entry["inputs"] = {"ckpt_name": entry["inputs"]["ckpt_name"]}
            entry["class_type"] = STAND_INS[entry["class_type"]]
    return Workflow.from_api(prompt, name)


@pytest.mark.parametrize("name", ["unclip_a0", "unclip_a03", "unclip_chain", "unclip_batch2", "unclip_no_image",
                                  "revision_a0", "revision_chain", "revision_refiner"])
def test_sampling_matches_comfyui(executor, name):
    out = executor.run(reference_workflow(name), targets=["k"]).get("k")["samples"]
    ref = SAMPLES[f"sample/{name}"]
    assert out.shape == ref.shape
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4, f"{name}: max difference {rel:.2e} of the latent's max abs value"


def test_the_image_changes_the_picture():
    """The references differ from each other: the image, its noise level and chaining all count."""
    names = ["unclip_a0", "unclip_a03", "unclip_chain", "unclip_batch2", "unclip_no_image"]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert float((SAMPLES[f"sample/{a}"] - SAMPLES[f"sample/{b}"]).abs().max()) > 1e-2, (a, b)


# -- the nodes -----------------------------------------------------------------------------------
def test_unclip_conditioning_appends_an_entry_and_strength_0_changes_nothing():
    from latentgraph.nodes.unclip import unCLIPConditioning

    cond = [[torch.zeros(1, 77, 32), {"pooled_output": torch.ones(1, 32)}]]
    cv_a, cv_b = output(INPUTS["embeds32_a"]), output(INPUTS["embeds32_b"])
    assert unCLIPConditioning(cond, cv_a, 0.0, 0.5) is cond
    one = unCLIPConditioning(cond, cv_a, 0.8, 0.25)
    two = unCLIPConditioning(one, cv_b, -1.0, 0.0)
    assert "unclip_conditioning" not in cond[0][1]  # the input is never changed
    entries = one[0][1]["unclip_conditioning"]
    assert [(e["clip_vision_output"], e["strength"], e["noise_augmentation"]) for e in entries] == [(cv_a, 0.8, 0.25)]
    assert [(e["clip_vision_output"], e["strength"]) for e in two[0][1]["unclip_conditioning"]] \
        == [(cv_a, 0.8), (cv_b, -1.0)]
    assert two[0][0] is cond[0][0] and torch.equal(two[0][1]["pooled_output"], torch.ones(1, 32))


def node_error(executor, wf: Workflow, target: str):
    from latentgraph.graph import NodeExecutionError

    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=[target])
    return info.value


def unclip_graph(wf: Workflow, ckpt: str, cv: str) -> None:
    ck = wf.add("ckpt", "unCLIPCheckpointLoader", ckpt_name=ckpt)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("u", "unCLIPConditioning", conditioning="pos", clip_vision_output=cv, strength=1.0, noise_augmentation=0.1)
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("k", "KSampler", model=ck.MODEL, seed=1, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
           positive="u", negative="neg", latent_image="empty", denoise=1.0)


def test_the_checkpoints_image_encoder_feeds_unclip_end_to_end(executor):
    from latentgraph.models.clip_vision import ClipVision

    wf = Workflow()
    wf.add("img", "EmptyImage", width=64, height=48, batch_size=1, color=0xC03020)
    wf.add("enc", "CLIPVisionEncode", clip_vision="ckpt.CLIP_VISION", image="img", crop="center")
    unclip_graph(wf, "lgB_tiny_unclip_l.safetensors", "enc")
    result = executor.run(wf, targets=["k", "ckpt", "enc"])
    vision = result.get("ckpt", 3)
    assert isinstance(vision, ClipVision) and vision.config.projection_dim == 32
    assert result.get("enc").image_embeds.shape == (1, 32)
    with_image = result.get("k")["samples"]
    wf.nodes["u"].inputs["strength"] = 0.0  # strength 0: the image is dropped, y is zeros
    without = executor.run(wf, targets=["k"]).get("k")["samples"]
    assert with_image.shape == without.shape == (1, 4, 8, 8)
    assert float((with_image - without).abs().max()) > 1e-2


def test_a_checkpoint_without_image_encoder_fails_where_clip_vision_is_used(executor, tmp_path):
    from latentgraph.models.checkpoint import read_state_dict, save_checkpoint

    src = executor.env.find_model("checkpoints", "lgB_tiny_unclip_l.safetensors")
    sd, meta = read_state_dict(src)
    path = src.parent / "lgB_unclip_no_vision.safetensors"
    save_checkpoint({k: v for k, v in sd.items() if not k.startswith("embedder.")}, path, meta)
    wf = Workflow()
    wf.add("img", "EmptyImage", width=64, height=64, batch_size=1, color=0)
    wf.add("enc", "CLIPVisionEncode", clip_vision="ckpt.CLIP_VISION", image="img", crop="center")
    unclip_graph(wf, path.name, "enc")
    err = node_error(executor, wf, "k")
    assert (err.node_id, err.class_type) == ("enc", "CLIPVisionEncode")
    assert err.exception_message == (
        f"{path}: this checkpoint has no CLIP image encoder (no embedder.model.visual.* tensors), so "
        f"unCLIPCheckpointLoader's CLIP_VISION output is empty: load one with CLIPVisionLoader instead")
    # its other outputs work: the model samples with the fixture's image
    wf.add("cv", "FixtureClipVisionOutput", key="embeds32_a")
    wf.nodes["u"].inputs["clip_vision_output"] = "cv"
    assert executor.run(wf, targets=["k"]).get("k")["samples"].shape == (1, 4, 8, 8)


def test_checkpoint_loader_simple_reads_unclip_and_wrong_widths_are_errors(executor):
    wf = reference_workflow("unclip_a0")
    wf.nodes["ckpt"].class_type = "CheckpointLoaderSimple"
    out = executor.run(wf, targets=["k"]).get("k")["samples"]
    ref = SAMPLES["sample/unclip_a0"]
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4
    wf.nodes["cv"].inputs["key"] = "embeds1280"
    err = node_error(executor, wf, "k")
    assert (err.node_id, err.class_type) == ("k", "KSampler")
    assert err.exception_message.startswith(
        "Stable Diffusion 2.1 unCLIP-L (label_emb 64 wide) takes CLIP image embeddings 32 wide; this CLIP vision "
        "output's image_embeds are 1280 wide")


def test_unclip_entries_on_a_model_that_cannot_read_them_are_errors(executor, tmp_path):
    from latentgraph.models.make import make_checkpoint

    ckpts = executor.env.find_model("checkpoints", "lgB_tiny_unclip_l.safetensors").parent
    make_checkpoint(ckpts / "lgB_sd15.safetensors", "sd15", "tiny", seed=2)
    make_checkpoint(ckpts / "lgB_sdxl.safetensors", "sdxl", "tiny", seed=2)
    wf = reference_workflow("unclip_a0")
    wf.nodes["ckpt"].class_type = "CheckpointLoaderSimple"
    wf.nodes["ckpt"].inputs["ckpt_name"] = "lgB_sd15.safetensors"
    err = node_error(executor, wf, "k")
    assert err.exception_message == (
        "the conditioning has unCLIP image entries (unCLIPConditioning), which a Stable Diffusion 1.x model cannot "
        "read: use an SD2.1-unCLIP checkpoint, or SDXL (Revision), or remove the unCLIPConditioning node")
    wf.nodes["ckpt"].inputs["ckpt_name"] = "lgB_sdxl.safetensors"  # pooled text 16 wide: no room for 1280
    wf.nodes["cv"].inputs["key"] = "embeds1280"
    err = node_error(executor, wf, "k")
    assert err.exception_message == (
        "Stable Diffusion XL Revision (unCLIPConditioning) puts a 1280-wide image embedding where the pooled text "
        "goes; this model's pooled text is 16 wide")


# -- files: detection, what is still refused, make-checkpoint ----------------------------------
def meta_unclip(family: str, size: str = "full") -> dict:
    """An unCLIP checkpoint's tensors on the meta device (no memory), as make-checkpoint lays them out."""
    from latentgraph.models.families import full_architecture, tiny_architecture
    from latentgraph.models.make import unclip_tensors

    arch = full_architecture(family) if size == "full" else tiny_architecture(family)
    with torch.device("meta"):
        tensors, _ = unclip_tensors(arch)
    return tensors


@pytest.mark.parametrize("family, dim, vision_width, layers", [("sd21_unclip_l", 768, 1024, 24),
                                                               ("sd21_unclip_h", 1024, 1280, 32)])
def test_full_size_files_have_the_published_layout_and_are_detected_from_keys(family, dim, vision_width, layers):
    from latentgraph.models.checkpoint import detect_architecture

    sd = meta_unclip(family)
    visual = {k for k in sd if k.startswith("embedder.model.visual.")}
    assert sd["model.diffusion_model.label_emb.0.0.weight"].shape == (1280, 2 * dim)
    assert sd["embedder.model.visual.proj"].shape == (vision_width, dim)
    assert sd["embedder.model.visual.conv1.weight"].shape == (vision_width, 3, 14, 14)
    assert sd["embedder.model.visual.positional_embedding"].shape == (257, vision_width)
    assert sd[f"embedder.model.visual.transformer.resblocks.{layers - 1}.attn.in_proj_weight"].shape \
        == (3 * vision_width, vision_width)
    assert len(visual) == 8 + 12 * layers  # conv1, class/positional embeddings, ln_pre, ln_post, proj; 12 per layer
    assert sorted(k for k in sd if k.startswith("noise_augmentor.")) == sorted(
        "noise_augmentor." + k for k in schedule_buffers())
    arch = detect_architecture(sd, None, "u.safetensors")
    assert (arch.family, arch.unclip_dim, arch.unet.context_dim) == (family, dim, 1024)
    # the UNet alone is not a checkpoint, and says what it is
    unet_only = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    with pytest.raises(CheckpointError) as info:
        detect_architecture(unet_only, None, "u.safetensors")
    assert str(info.value).startswith(
        f"u.safetensors: no text encoder found (no cond_stage_model.* or conditioner.embedders.*); the UNet's context "
        f"width 1024 suggests {family} (its label_emb takes {2 * dim} values). UNet-only files belong in "
        f"diffusion_models/")


def test_tiny_files_are_detected_from_keys_with_noise_augmentor():
    from latentgraph.models.checkpoint import detect_architecture

    heads = {"unet_num_head_channels": 16, "text_num_heads": 2}
    for family, dim in (("sd21_unclip_l", 32), ("sd21_unclip_h", 48)):
        arch = detect_architecture(meta_unclip(family, "tiny"), None, "t.safetensors", heads)
        assert (arch.family, arch.unclip_dim) == (family, dim)
    # without noise_augmentor.* a tiny SD2 with a label_emb is not read as unCLIP: refused as before
    sd = {k: v for k, v in meta_unclip("sd21_unclip_l", "tiny").items() if not k.startswith(("noise_", "embedder."))}
    with pytest.raises(CheckpointError) as info:
        detect_architecture(sd, None, "t.safetensors", heads)
    assert str(info.value) == (
        "t.safetensors: does not have the layout of Stable Diffusion 2.x: the UNet has a label_emb of width 64, "
        "expected none. latentgraph loads only the layouts it samples correctly, so the file is refused")


def test_unclip_tensors_on_a_plain_sd2_are_still_refused():
    """An SD2 whose UNet takes no image embedding but which carries unCLIP's tensors: not unCLIP,
    and the tensors are not dropped silently."""
    from latentgraph.models.checkpoint import detect_architecture
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.make import random_networks
    from latentgraph.models.checkpoint import original_layout

    arch = tiny_architecture("sd2")
    with torch.device("meta"):
        sd = original_layout(arch, *random_networks(arch))
    sd["noise_augmentor.betas"] = torch.zeros(1000)
    with pytest.raises(CheckpointError) as info:
        detect_architecture(sd, None, "p.safetensors", {"unet_num_head_channels": 16, "text_num_heads": 2})
    assert str(info.value).startswith(
        "p.safetensors: holds 1 tensors that are no part of a Stable Diffusion 2.x checkpoint: noise_augmentor.betas "
        "(1). They may mark a model variant that samples differently, so the file is refused")


def test_make_checkpoint_cli_writes_loadable_unclip_files(tmp_path, capsys):
    from latentgraph.cli import main
    from latentgraph.models.checkpoint import load_checkpoint, load_unclip_vision

    out = tmp_path / "unclip_h.safetensors"
    assert main(["make-checkpoint", "--family", "sd21_unclip_h", "--seed", "3", str(out)]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {out}: Stable Diffusion 2.1 unCLIP-H (tiny, v-prediction, fp32)")
    ck = load_checkpoint(out)
    assert (ck.arch.family, ck.arch.unclip_dim, ck.arch.prediction) == ("sd21_unclip_h", 48, "v")
    vision = load_unclip_vision(out)
    assert (vision.config.projection_dim, vision.config.num_layers, vision.config.act) == (48, 2, "gelu")
    again = tmp_path / "again.safetensors"
    assert main(["make-checkpoint", "--family", "sd21_unclip_h", "--seed", "3", str(again)]) == 0
    assert again.read_bytes() == out.read_bytes()  # seeded: the same bytes

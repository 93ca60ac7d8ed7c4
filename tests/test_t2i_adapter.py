"""T2I-Adapters: the full, light and SDXL networks and their files (layouts, detection through
the ControlNet loader, errors), make-checkpoint --kind t2i_adapter, where the features land in
the UNet, and whole sampling runs against ComfyUI 0.3.64's latents
(tests/fixtures/comfy_reference/t2i_adapter/README.md)."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.cli import main as cli_main
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.models.controlnet import load_controlnet_file
from latentgraph.models.errors import CheckpointError
from latentgraph.models.make import make_t2i_adapter
from latentgraph.models.t2i_adapter import (AdapterConfig, T2IAdapter, adapter_hint, build_t2i_adapter,
                                            config_from_state_dict)
from latentgraph.nodes import create_registry
from conftest import FIXTURES

HERE = FIXTURES / "comfy_reference" / "t2i_adapter"
ORACLE = load_file(HERE / "t2i_ref.safetensors")
# sha256 of make_fixtures.py's checkpoint (not committed: 18 MB); a different torch could draw other weights
CHECKPOINT_SHA256 = "94c1ae3405c8293ea3450abe23c63e24049636b879e23865fa43506a8e973133"


# -- the networks and their layouts ---------------------------------------------------------
@pytest.mark.parametrize("variant, keys, levels", [
    ("full", 38, [(32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1)]),
    ("light", 80, [(32, 8, 8), (64, 4, 4), (128, 2, 2), (128, 1, 1)]),
    ("xl", 38, [(32, 8, 8), (64, 8, 8), (128, 4, 4), (128, 4, 4)])])
def test_variants_load_back_and_give_one_feature_per_level(tmp_path, variant, keys, levels):
    path = tmp_path / f"{variant}.safetensors"
    made = make_t2i_adapter(path, variant, "tiny", seed=3)
    net = load_controlnet_file(path)  # the ControlNet loader dispatches on the keys
    assert isinstance(net, T2IAdapter) and net.config == made
    assert len(load_file(path)) == keys
    side = 128 if variant == "xl" else 64  # a 64 x 64 latent's hint at 8x; SDXL's is 1/2 latent after unshuffle 16
    feats = net(torch.rand(2, 3, side, side))
    assert [tuple(f.shape[1:]) for f in feats] == levels and all(f.shape[0] == 2 for f in feats)


def test_full_size_layouts_match_comfyuis_rules(tmp_path):
    """What ComfyUI's loader reads from the keys: light <- body.0.in_conv; full/xl <- conv_in
    (xl when its input channels are 256 or 768), channels c, 2c, 4c, 4c from conv_in."""
    for variant, cin in (("full", 192), ("light", 192), ("xl", 768)):
        config = make_t2i_adapter(tmp_path / f"{variant}.safetensors", variant, "full", seed=0, dtype="fp16")
        sd = load_file(tmp_path / f"{variant}.safetensors")
        assert config_from_state_dict(sd) == config
        assert config.cin == cin and config.channels == (320, 640, 1280, 1280)
    assert config.unshuffle == 16 and config.hint_channels == 3


def test_control_places_features_after_each_levels_last_block():
    """ComfyUI pops "input" from the end, one per input block: SD1 gets the features after
    blocks 2, 5, 8, 11; SDXL after 3, 5, 8, and its last level in the middle block."""
    feats = [torch.full((1,), float(i)) for i in range(4)]
    full = T2IAdapter(AdapterConfig("full", 192, (32, 64, 128, 128)))
    popped = full.control(feats)["input"][::-1]
    assert [i for i, f in enumerate(popped) if f is not None] == [2, 5, 8, 11]
    xl = T2IAdapter(AdapterConfig("xl", 768, (32, 64, 128, 128)))
    out = xl.control(feats)
    assert [i for i, f in enumerate(out["input"][::-1]) if f is not None] == [3, 5, 8]
    assert [float(f) for f in out["input"][::-1] if f is not None] == [0.0, 1.0, 2.0]
    assert float(out["middle"][0]) == 3.0


def test_hint_size_rounds_up_to_the_unshuffle_and_greys_for_one_channel():
    hint = torch.rand(1, 3, 64, 96)
    rgb = AdapterConfig("xl", 768, (32, 64, 128, 128))
    assert adapter_hint(hint, rgb, 5, 9).shape == (1, 3, 48, 80)  # 40 x 72 rounded up to 16
    grey = AdapterConfig("full", 64, (32, 64, 128, 128))
    out = adapter_hint(hint, grey, 8, 12)
    assert out.shape == (1, 1, 64, 96)
    assert torch.allclose(out, hint.mean(dim=1, keepdim=True))


def test_diffusers_names_are_read(tmp_path):
    path = tmp_path / "full.safetensors"
    make_t2i_adapter(path, "full", "tiny", seed=1)
    sd = load_file(path)
    renamed = {}
    for key, value in sd.items():  # the original -> diffusers' T2IAdapter names
        parts = key.split(".")
        if parts[0] == "body":
            i, j = divmod(int(parts[1]), 2)
            rest = parts[2:]
            if rest[0] in ("block1", "block2"):
                key = ".".join(["adapter.body", str(i), "resnets", str(j)] + rest)
            else:
                key = ".".join(["adapter.body", str(i)] + rest)
        else:
            key = "adapter." + key
        renamed[key] = value
    net = build_t2i_adapter(renamed, "diffusers.safetensors")
    ref = build_t2i_adapter(sd, "orig.safetensors")
    hint = torch.rand(1, 3, 64, 64)
    assert all(torch.equal(a, b) for a, b in zip(net(hint), ref(hint)))


def test_misfit_tensors_are_refused_with_the_file_named(tmp_path):
    path = tmp_path / "full.safetensors"
    make_t2i_adapter(path, "full", "tiny", seed=1)
    sd = load_file(path)
    del sd["body.3.block1.weight"]
    with pytest.raises(CheckpointError, match=r"(?s)^bad\.safetensors: T2I-Adapter tensors do not fit the layout read "
                                              r"from them \(full, channels \[32, 64, 128, 128\]\): .*body\.3\.block1"):
        build_t2i_adapter(sd, "bad.safetensors")
    with pytest.raises(CheckpointError, match=r"^odd\.safetensors: T2I-Adapter layout not understood: tensor "
                                              r"'body\.0\.block2\.weight' is missing$"):
        build_t2i_adapter({"conv_in.weight": torch.zeros(32, 192, 3, 3), "body.0.block1.weight": torch.zeros(1)},
                          "odd.safetensors")


def test_make_checkpoint_cli_kind_t2i_adapter(tmp_path, capsys):
    out = tmp_path / "a.safetensors"
    assert cli_main(["make-checkpoint", "--kind", "t2i_adapter", "--family", "sd15", "--variant", "light",
                     "--seed", "2", str(out)]) == 0
    assert "sd15 T2I-Adapter (light, tiny, fp32)" in capsys.readouterr().out
    assert load_controlnet_file(out).config.variant == "light"
    again = tmp_path / "b.safetensors"
    make_t2i_adapter(again, "light", "tiny", seed=2)
    assert out.read_bytes() == again.read_bytes()
    assert cli_main(["make-checkpoint", "--kind", "t2i_adapter", "--family", "sdxl",
                     str(tmp_path / "x.safetensors")]) == 0
    assert load_controlnet_file(tmp_path / "x.safetensors").config.variant == "xl"
    assert cli_main(["make-checkpoint", "--kind", "t2i_adapter", "--family", "sd15", "--variant", "xl",
                     str(tmp_path / "bad.safetensors")]) != 0
    assert ("a xl T2I-Adapter is not for sd15: use xl with sdxl, full or light with sd15 or sd2"
            in capsys.readouterr().err)


# -- sampling against ComfyUI -----------------------------------------------------------------
def _fixture_maker():
    spec = importlib.util.spec_from_file_location("t2i_make_fixtures", HERE / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "t2i_adapter").mkdir()
    (root / "in").mkdir()
    maker = _fixture_maker()
    ckpt = root / "models" / "checkpoints" / "tiny_sd15_4level.safetensors"
    maker.write_checkpoint(ckpt)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == CHECKPOINT_SHA256, \
        "make_fixtures.py made other weights than the reference run's (another torch version?)"
    shutil.copy(HERE / "tiny_t2i_full.safetensors", root / "models" / "t2i_adapter")
    shutil.copy(HERE / "tiny_t2i_grey.safetensors", root / "models" / "t2i_adapter")
    shutil.copy(HERE / "t2i_hint.png", root / "in")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def _graph(width: int = 64, height: int = 64, batch: int = 1) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="tiny_sd15_4level.safetensors")
    wf.add("t2i", "ControlNetLoader", control_net_name="tiny_t2i_full.safetensors")
    wf.add("hint", "LoadImage", image="t2i_hint.png")
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("empty", "EmptyLatentImage", width=width, height=height, batch_size=batch)
    return wf


def _sample(executor, wf: Workflow, positive: str, negative: str) -> torch.Tensor:
    wf.add("k", "KSampler", model="ckpt.MODEL", seed=42, steps=4, cfg=5.0, sampler_name="euler", scheduler="normal",
           positive=positive, negative=negative, latent_image="empty", denoise=1.0)
    return executor.run(wf, targets=["k"]).get("k")["samples"]


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """The issue's tolerance: within 1e-4 of the reference's largest magnitude."""
    assert out.shape == ref.shape
    assert float((out - ref).abs().max() / ref.abs().max()) < 1e-4


def test_plain_run_is_the_reference_and_the_adapter_changes_it(executor):
    _close(_sample(executor, _graph(), "pos", "neg"), ORACLE["plain"])
    assert float((ORACLE["adv"] - ORACLE["plain"]).abs().max() / ORACLE["plain"].abs().max()) > 0.05


def test_apply_advanced_matches_comfyui(executor):
    wf = _graph()
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="t2i", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    _close(_sample(executor, wf, "adv.positive", "adv.negative"), ORACLE["adv"])


def test_apply_old_matches_comfyui(executor):
    wf = _graph()
    wf.add("old", "ControlNetApply", conditioning="pos", control_net="t2i", image="hint.IMAGE", strength=1.0)
    _close(_sample(executor, wf, "old", "neg"), ORACLE["old"])


def test_chained_with_range_on_a_batch_of_another_size_matches_comfyui(executor):
    wf = _graph(64, 48, 2)
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="t2i", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    wf.add("chain", "ControlNetApplyAdvanced", positive="adv.positive", negative="adv.negative", control_net="t2i",
           image="hint.IMAGE", strength=0.5, start_percent=0.25, end_percent=0.75)
    _close(_sample(executor, wf, "chain.positive", "chain.negative"), ORACLE["chain_batch2_64x48"])


# -- SDXL -----------------------------------------------------------------------------------------
XL_ORACLE = load_file(HERE / "t2i_xl_ref.safetensors")
SDXL_CHECKPOINT_SHA256 = "b41e2c852dc4b1cd4d0c4fb3e50bfa5784c364ba66291a86e822cb123bf72e94"


@pytest.fixture(scope="module")
def xl_executor(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i_xl")
    (root / "models" / "checkpoints").mkdir(parents=True)
    (root / "models" / "t2i_adapter").mkdir()
    (root / "in").mkdir()
    ckpt = root / "models" / "checkpoints" / "tiny_sdxl_3level.safetensors"
    _fixture_maker().write_sdxl_checkpoint(ckpt)
    assert hashlib.sha256(ckpt.read_bytes()).hexdigest() == SDXL_CHECKPOINT_SHA256, \
        "make_fixtures.py made other weights than the reference run's (another torch version?)"
    shutil.copy(HERE / "tiny_t2i_xl.safetensors", root / "models" / "t2i_adapter")
    shutil.copy(HERE / "t2i_hint.png", root / "in")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")
    return Executor(create_registry(), env)


def _xl_graph() -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name="tiny_sdxl_3level.safetensors")
    wf.add("t2i", "ControlNetLoader", control_net_name="tiny_t2i_xl.safetensors")
    wf.add("hint", "LoadImage", image="t2i_hint.png")
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text="a red circle")
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="blurry")
    wf.add("empty", "EmptyLatentImage", width=64, height=64, batch_size=1)
    return wf


def test_xl_adapter_matches_comfyui(xl_executor):
    _close(_sample(xl_executor, _xl_graph(), "pos", "neg"), XL_ORACLE["plain"])
    wf = _xl_graph()
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="t2i", image="hint.IMAGE",
           strength=0.8, start_percent=0.0, end_percent=1.0)
    _close(_sample(xl_executor, wf, "adv.positive", "adv.negative"), XL_ORACLE["adv"])
    assert float((XL_ORACLE["adv"] - XL_ORACLE["plain"]).abs().max() / XL_ORACLE["plain"].abs().max()) > 0.01


def test_grey_adapter_averages_the_hint_and_matches_comfyui(executor):
    """A 1-channel adapter (cin 64) gets the RGB hint averaged to grey, as in ComfyUI."""
    grey = load_file(HERE / "t2i_grey_ref.safetensors")["adv"]
    wf = _graph()
    wf.remove("t2i")
    wf.add("t2i", "ControlNetLoader", control_net_name="tiny_t2i_grey.safetensors")
    wf.add("adv", "ControlNetApplyAdvanced", positive="pos", negative="neg", control_net="t2i", image="hint.IMAGE",
           strength=1.2, start_percent=0.0, end_percent=1.0)
    _close(_sample(executor, wf, "adv.positive", "adv.negative"), grey)
    assert float((grey - ORACLE["plain"]).abs().max() / ORACLE["plain"].abs().max()) > 0.01

"""The everyday latent nodes of issue 16 (latentgraph/nodes/latent_ops.py) against ComfyUI 0.3.64:
the oracle prompt tests/fixtures/comfy_reference/everyday/latent_ops_prompt.json runs here on the
same committed .latent inputs, each SaveLatent file is read back and compared with what ComfyUI
saved; then edge cases, errors and the node definitions (object_info_everyday.json)."""

from __future__ import annotations

import json
import shutil
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, ValidationError
from latentgraph.nodes import create_registry
from latentgraph.nodes.latent_ops import (LatentAdd, LatentBatch, LatentBatchSeedBehavior, LatentBlend,
                                          LatentCompositeMasked, LatentCrop, LatentInterpolate, LatentRotate,
                                          check_latent_file)
from conftest import FIXTURES
from test_node_definitions import FLAGS, normalise

REF = FIXTURES / "comfy_reference" / "everyday"
PROMPT = json.loads((REF / "latent_ops_prompt.json").read_text())
LATENTS = load_file(str(REF / "latent_ops_ref.safetensors"))
THEIRS = json.loads((FIXTURES / "comfy_reference" / "object_info_everyday.json").read_text())["nodes"]
INPUTS = ("lgI_a.latent", "lgI_b.latent", "lgI_c.latent", "lgI_old.latent", "lgI_mask.png")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("everyday")
    (root / "in").mkdir()
    for name in INPUTS:
        shutil.copy(REF / name, root / "in" / name)
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


@pytest.fixture(scope="module")
def saved(env):
    """The oracle prompt run here: {SaveLatent prefix: the .latent file it wrote}."""
    run = Executor(create_registry(), env).run(PROMPT)
    files = {}
    for nid, node in PROMPT.items():
        if node["class_type"] == "SaveLatent":
            (entry,) = run.outputs[nid]["latents"]
            assert entry["subfolder"] == "lgI_everyday" and entry["type"] == "output"
            files[node["inputs"]["filename_prefix"].split("/")[1]] = env.output_dir / "lgI_everyday" / entry["filename"]
    return files


def test_the_reference_holds_every_saved_latent(saved):
    assert sorted(saved) == sorted(LATENTS) and len(LATENTS) == 15
    assert all(path.name.endswith("_00001_.latent") for path in saved.values())


@pytest.mark.parametrize("name", sorted(LATENTS))
def test_latent_matches_comfyui(name, saved):
    ours = load_file(str(saved[name]))
    assert sorted(ours) == ["latent_format_version_0", "latent_tensor"]
    out, ref = ours["latent_tensor"], LATENTS[name]
    assert out.shape == ref.shape and out.dtype == torch.float32
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"


def test_pure_moves_are_exact(saved):
    """Flips, rotations, crops and loads move values without arithmetic: bit for bit."""
    for name in ("flip_x", "flip_y", "rotate90", "rotate270", "crop", "crop_clamped", "multiply"):
        assert torch.equal(load_file(str(saved[name]))["latent_tensor"], LATENTS[name]), name


def test_save_latent_writes_comfyuis_format(saved, env):
    with safe_open(str(saved["add"]), "pt") as fh:
        meta = fh.metadata()
        assert fh.get_tensor("latent_format_version_0").shape == (0,)
    assert list(meta) == ["prompt"]
    written = json.loads(meta["prompt"])  # the API prompt as the executor holds it (with _meta titles)
    assert {nid: (n["class_type"], n["inputs"]) for nid, n in written.items()} == {
        nid: (n["class_type"], n["inputs"]) for nid, n in PROMPT.items()}
    # the counter continues past the files already there, as ComfyUI's does
    reg = create_registry()
    again = Executor(reg, env).run({"1": PROMPT["1"], "2": {"class_type": "SaveLatent", "inputs": {
        "samples": ["1", 0], "filename_prefix": "lgI_everyday/add"}}})
    assert again.outputs["2"]["latents"][0]["filename"] == "add_00002_.latent"


def test_old_format_latent_is_unscaled():
    """A file without latent_format_version_0 holds samples x 0.18215 (ComfyUI before 2023)."""
    raw = load_file(str(REF / "lgI_old.latent"))["latent_tensor"]
    assert torch.allclose(LATENTS["old_format"], raw / 0.18215, rtol=1e-6, atol=0)


def _lat(*shape, seed=0, **extra):
    return {"samples": torch.randn(shape, generator=torch.Generator().manual_seed(seed)), **extra}


def test_batch_index_bookkeeping():
    a, b = _lat(2, 4, 8, 8, batch_index=[5, 6]), _lat(1, 4, 8, 8)
    assert LatentBatch(samples1=a, samples2=b)["batch_index"] == [5, 6, 0]
    assert LatentBatchSeedBehavior(samples=a, seed_behavior="fixed")["batch_index"] == [5, 5]
    assert LatentBatchSeedBehavior(samples=_lat(3, 4, 8, 8), seed_behavior="fixed")["batch_index"] == [0, 0, 0]
    rnd = LatentBatchSeedBehavior(samples=a, seed_behavior="random")
    assert "batch_index" not in rnd and a["batch_index"] == [5, 6]  # the input is never changed


def test_add_cycles_and_cuts_the_batch():
    a, b = _lat(3, 4, 8, 8), _lat(2, 4, 8, 8, seed=1)
    out = LatentAdd(samples1=a, samples2=b)["samples"]
    assert torch.equal(out[2], a["samples"][2] + b["samples"][0])
    short = LatentAdd(samples1=_lat(1, 4, 8, 8), samples2=b)["samples"]
    assert short.shape == (1, 4, 8, 8)


def test_interpolate_handles_zero_vectors_and_batches():
    zero = {"samples": torch.zeros(2, 4, 8, 8)}
    b = _lat(2, 4, 8, 8)
    assert torch.equal(LatentInterpolate(samples1=zero, samples2=zero, ratio=0.5)["samples"], zero["samples"])
    # ratio 0 is samples2 itself, per item (ComfyUI's broadcast fails for a batch of 2)
    out = LatentInterpolate(samples1=_lat(2, 4, 8, 8, seed=3), samples2=b, ratio=0.0)["samples"]
    assert torch.allclose(out, b["samples"], atol=1e-6)


def test_mismatched_latents_are_named():
    with pytest.raises(ValueError, match=r"LatentAdd: latents of shape \(1, 16, 8, 8\) and \(1, 4, 8, 8\) have "
                                         r"different channels"):
        LatentAdd(samples1=_lat(1, 4, 8, 8), samples2=_lat(1, 16, 8, 8))
    with pytest.raises(ValueError, match=r"LatentBlend: samples2 of shape \(2, 4, 4, 4\) cannot blend"):
        LatentBlend(samples1=_lat(1, 4, 8, 8), samples2=_lat(2, 4, 4, 4), blend_factor=0.5)
    with pytest.raises(ValueError, match="LatentCompositeMasked: source"):
        LatentCompositeMasked(destination=_lat(1, 4, 8, 8), source=_lat(1, 16, 8, 8), x=0, y=0,
                              resize_source=False)


def test_crop_of_a_small_latent_starts_at_zero():
    s = _lat(1, 4, 4, 6)
    out = LatentCrop(samples=s, width=64, height=64, x=8, y=8)["samples"]
    assert torch.equal(out, s["samples"][..., :4, :6])


def test_rotate_none_is_identity_and_270_undoes_90():
    s = _lat(1, 4, 6, 5)
    assert torch.equal(LatentRotate(samples=s, rotation="none")["samples"], s["samples"])
    turned = LatentRotate(samples=s, rotation="90 degrees")
    assert torch.equal(LatentRotate(samples=turned, rotation="270 degrees")["samples"], s["samples"])


def test_batch_budget_is_checked_before_allocating():
    big = {"samples": torch.zeros(1, 4, 64, 64).expand(2**17, 4, 64, 64)}  # a view: no memory
    with pytest.raises(ValueError, match=r"LatentBatch of 131072 \+ 131072 items makes a latent of 16 GiB, "
                                         r"which exceeds the limit tensor_bytes = 8 GiB"):
        LatentBatch(samples1=big, samples2=big)


def test_load_latent_refuses_bad_files(tmp_path):
    not_st = tmp_path / "x.latent"
    not_st.write_bytes(b"\x80\x04pickle")
    with pytest.raises(ValueError, match=r"latent file 'x.latent' is not a safetensors file"):
        check_latent_file(not_st, "x.latent")
    other = tmp_path / "o.latent"
    save_file({"samples": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match=r"latent file 'o.latent' holds no latent_tensor \(keys: samples\)"):
        check_latent_file(other, "o.latent")
    flat = tmp_path / "f.latent"
    save_file({"latent_tensor": torch.zeros(3)}, str(flat))
    with pytest.raises(ValueError, match=r"latent_tensor has shape \[3\]; a latent has 4 or 5 dimensions"):
        check_latent_file(flat, "f.latent")
    huge = tmp_path / "h.latent"  # a header that claims 4 GiB of data the file does not hold
    header = json.dumps({"latent_tensor": {"dtype": "F32", "shape": [4096, 4, 512, 512],
                                           "data_offsets": [0, 16 * 2**30]}}).encode()
    huge.write_bytes(struct.pack("<Q", len(header)) + header)
    with pytest.raises(ValueError, match=r"latent file 'h.latent' with latent_tensor \[4096, 4, 512, 512\] "
                                         r"makes a latent of 16 GiB, which exceeds the limit tensor_bytes = 8 GiB"):
        check_latent_file(huge, "h.latent")


def test_load_latent_validation_names_the_file(env):
    prompt = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "missing.latent"}},
              "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}
    with pytest.raises(ValidationError) as info:
        Executor(create_registry(), env).run(prompt)
    assert "Invalid latent file: missing.latent" in str(info.value)


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty_input")
    return create_registry().object_info(Environment(input_dir=empty, models_dir=empty, device="cpu"))


@pytest.mark.parametrize("name", sorted(THEIRS))
def test_node_is_declared_as_in_comfyui(name, ours):
    theirs, mine = THEIRS[name], ours[name]
    for field in ("category", "python_module", "output", "output_name", "output_is_list"):
        assert mine[field] == theirs[field], f"{name}.{field}"
    assert mine["display_name"] == (theirs["display_name"] or name)
    for flag in FLAGS:
        assert bool(mine.get(flag)) == bool(theirs.get(flag)), f"{name}.{flag}"
    for group in ("required", "optional"):
        assert mine["input_order"].get(group, []) == theirs["input_order"].get(group, []), f"{name} {group}"
        for inp, spec in theirs["input"].get(group, {}).items():
            assert normalise(mine["input"][group][inp]) == normalise(spec), f"{name}.{inp}"

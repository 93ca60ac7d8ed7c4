"""Merging and saving nodes: the merged weights per key, chaining with LoRAs, refusals, the
saved files' layouts and names, the save -> load round trip, LoRA extraction, and parity with
ComfyUI 0.3.64 (tests/fixtures/comfy_reference/merging/README.md)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor, NodeExecutionError
from latentgraph.models.lora_extract import low_rank, quantile
from latentgraph.models.make import make_checkpoint
from latentgraph.nodes import create_registry
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference" / "merging"
PROMPT = json.loads((REF / "merging_prompt.json").read_text())
SAVED = json.loads((REF / "saved_files.json").read_text())
LATENTS = load_file(REF / "merging_ref.safetensors")
A, B = "lgJ_merge_a.safetensors", "lgJ_merge_b.safetensors"


def _content_hash(path) -> str:
    sd = load_file(path)
    h = hashlib.sha256()
    for k in sorted(sd):
        h.update(k.encode())
        h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("merging")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    make_checkpoint(ckpts / A, "sd15", "tiny", seed=1)
    make_checkpoint(ckpts / B, "sd15", "tiny", seed=2)
    make_checkpoint(ckpts / "other_sd2.safetensors", "sd2", "tiny", seed=3)
    (root / "models" / "loras").mkdir()
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


@pytest.fixture(scope="module")
def executor(env):
    return Executor(create_registry(), env)


def _ours(prompt: dict) -> dict:
    """The oracle's prompt for latentgraph: TinyCheckpointLoader becomes CheckpointLoaderSimple."""
    out = json.loads(json.dumps(prompt))
    for spec in out.values():
        if spec["class_type"] == "TinyCheckpointLoader":
            spec["class_type"], spec["inputs"] = "CheckpointLoaderSimple", {"ckpt_name": spec["inputs"]["ckpt_name"]}
    return out


def _subgraph(*ids: str) -> dict:
    ours = _ours(PROMPT)
    keep, todo = set(), list(ids)
    while todo:
        node = todo.pop()
        if node not in keep:
            keep.add(node)
            todo += [v[0] for v in ours[node]["inputs"].values() if isinstance(v, list)]
    return {k: v for k, v in ours.items() if k in keep}


def _n(class_type: str, **inputs) -> dict:
    return {"class_type": class_type, "inputs": inputs}


def _params(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_made_checkpoints_are_the_ones_the_oracle_ran(env):
    """The oracle ran files from make_checkpoint; if its random weights ever change, the parity
    numbers below mean nothing: regenerate them (README)."""
    for name in (A, B):
        assert _content_hash(env.models_dir / "checkpoints" / name) == SAVED["checkpoints"][name]["tensor_sha256"]


def test_merged_weights_follow_comfyui_formulas(executor):
    wf = _subgraph("1", "2")
    wf.update({"s": _n("ModelMergeSimple", model1=["1", 0], model2=["2", 0], ratio=0.3),
               "b": {"class_type": "ModelMergeBlocks", "inputs": {"model1": ["1", 0], "model2": ["2", 0],
                                                                   "input": 0.2, "middle": 0.7, "out": 0.5}},
               "d": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["1", 0], "model2": ["2", 0],
                                                                     "multiplier": 2.5}},
               "a": {"class_type": "ModelMergeAdd", "inputs": {"model1": ["1", 0], "model2": ["2", 0]}},
               "one": _n("ModelMergeSimple", model1=["1", 0], model2=["2", 0], ratio=1.0)})
    res = executor.run(wf, targets=["1", "2", "s", "b", "d", "a", "one"])
    m1, m2 = res.get("1", 0), res.get("2", 0)
    w1, w2 = _params(m1.unet), _params(m2.unet)
    before = {k: v.clone() for k, v in w1.items()}
    simple, blocks = _params(res.get("s").unet), _params(res.get("b").unet)
    sub, add = _params(res.get("d").unet), _params(res.get("a").unet)
    assert len(simple) == len(w1) == 286
    ratio_of = {"input_blocks.1.0.in_layers.2.weight": 0.2, "time_embed.0.weight": 0.2,
                "middle_block.1.proj_in.weight": 0.7,
                "output_blocks.2.0.skip_connection.bias": 0.5, "out.2.weight": 0.5}
    for k in w1:
        assert torch.equal(simple[k], w1[k] * 0.3 + 0.7 * w2[k]), k
        assert torch.equal(sub[k], w1[k] * 2.5 + (-2.5) * w2[k]), k
        assert torch.equal(add[k], w1[k] + w2[k]), k
    for k, r in ratio_of.items():
        assert torch.equal(blocks[k], w1[k] * r + (1.0 - r) * w2[k]), k
    # ratio 1 keeps model1's own tensors (nothing computed), and the inputs are unchanged
    one = dict(res.get("one").unet.named_parameters())
    assert all(one[k] is v for k, v in m1.unet.named_parameters())
    assert all(torch.equal(v, before[k]) for k, v in m1.unet.named_parameters())
    assert res.get("s").unet is not m1.unet and res.get("s").arch == m1.arch


def test_clip_merge_skips_nothing_it_should_merge_and_leaves_inputs(executor):
    wf = _subgraph("1", "2")
    wf["c"] = {"class_type": "CLIPMergeSimple", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "ratio": 0.4}}
    wf["d"] = {"class_type": "CLIPMergeSubtract", "inputs": {"clip1": ["1", 1], "clip2": ["2", 1], "multiplier": 0.5}}
    res = executor.run(wf, targets=["1", "2", "c", "d"])
    c1, c2 = res.get("1", 1).encoders["l"], res.get("2", 1).encoders["l"]
    merged, diff = _params(res.get("c").encoders["l"]), _params(res.get("d").encoders["l"])
    w1, w2 = _params(c1), _params(c2)
    assert len(merged) == 36
    for k in w1:
        assert torch.equal(merged[k], w1[k] * 0.4 + 0.6 * w2[k]), k
        assert torch.equal(diff[k], w1[k] * 0.5 + (-0.5) * w2[k]), k
    assert res.get("c").layer_idx == res.get("1", 1).layer_idx
    ours, theirs = dict(c1.named_buffers()), dict(res.get("c").encoders["l"].named_buffers())
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def _diff_lora(path, key: str, delta: torch.Tensor) -> None:
    save_file({f"diffusion_model.{key}.diff": delta}, str(path))


def test_merges_chain_with_loras_in_graph_order(env, executor):
    key = "out.2.weight"
    delta = torch.full((4, 32, 3, 3), 0.25)
    _diff_lora(env.models_dir / "loras" / "lgJ_delta.safetensors", key[: -len(".weight")], delta)
    wf = _subgraph("1", "2")
    lora = {"lora_name": "lgJ_delta.safetensors"}
    wf.update({"l1": _n("LoraLoaderModelOnly", model=["1", 0], strength_model=0.5, **lora),
               "m": _n("ModelMergeSimple", model1=["l1", 0], model2=["2", 0], ratio=0.3),
               "l2": _n("LoraLoaderModelOnly", model=["m", 0], strength_model=2.0, **lora)})
    res = executor.run(wf, targets=["1", "2", "l2"])
    w1 = dict(res.get("1", 0).unet.named_parameters())[key]
    w2 = dict(res.get("2", 0).unet.named_parameters())[key]
    got = dict(res.get("l2").unet.named_parameters())[key]
    want = ((w1 + 0.5 * delta) * 0.3 + 0.7 * w2) + 2.0 * delta
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert torch.equal(dict(res.get("1", 0).unet.named_parameters())[key], w1)  # the loaded base is untouched


def test_different_architectures_are_refused_naming_node_inputs_and_keys(executor):
    wf = _subgraph("1")
    wf["o"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other_sd2.safetensors"}}
    wf["m"] = {"class_type": "ModelMergeSimple", "inputs": {"model1": ["1", 0], "model2": ["o", 0], "ratio": 0.5}}
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["m"])
    msg = str(info.value)
    assert info.value.node_id == "m"
    assert ("ModelMergeSimple: model1 (Stable Diffusion 1.x) and model2 (Stable Diffusion 2.x): the two models do not "
            "have the same architecture, so they cannot be merged weight by weight (") in msg
    assert "weights differ in shape (first, second): model.diffusion_model." in msg
    assert "ComfyUI would merge what fits and keep the rest of the first model (scaled by the ratio); " \
           "latentgraph refuses" in msg
    wf["c"] = {"class_type": "CLIPMergeAdd", "inputs": {"clip1": ["1", 1], "clip2": ["o", 1]}}
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["c"])
    assert ("CLIPMergeAdd: clip1 (Stable Diffusion 1.x) and clip2 (Stable Diffusion 2.x): the two CLIP models have "
            "different text encoders (l vs h): they come from different model families") in str(info.value)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    """ComfyUI's latent within 1e-4 relative to its largest value (the issue's tolerance)."""
    assert out.shape == ref.shape
    rel = float((out - ref).abs().max() / ref.abs().max())
    assert rel < 1e-4, rel


def test_merge_simple_matches_comfyui(executor):
    res = executor.run(_subgraph("11"), targets=["11"])
    _close(res.get("11")["samples"], LATENTS["sample/merge_simple"])


@pytest.mark.slow
@pytest.mark.parametrize("node,name", [("21", "merge_blocks"), ("32", "merge_add"), ("43", "clip_simple"),
                                       ("49", "clip_add")])
def test_other_merges_match_comfyui(executor, node, name):
    res = executor.run(_subgraph(node), targets=[node])
    _close(res.get(node)["samples"], LATENTS[f"sample/{name}"])


# -- saving ------------------------------------------------------------------------------------
def _layout(path) -> tuple[dict, list]:
    with safe_open(str(path), "pt") as f:
        return ({k: [f.get_slice(k).get_shape(), f.get_slice(k).get_dtype()] for k in f.keys()},
                sorted((f.metadata() or {}).keys()))


def _theirs(name: str) -> tuple[dict, list]:
    entry = SAVED["files"][f"lgJ/{name}_00001_.safetensors"]
    return entry["tensors"], entry["metadata_keys"]


def test_saved_files_have_comfyuis_layout_and_names(env, executor):
    """The oracle's CheckpointSave/ModelSave/CLIPSave/VAESave/LoraSave files, key for key (names,
    shapes, dtypes) and metadata key for key, less the differences README.md lists."""
    executor.run(_subgraph("60", "61", "62", "63", "64", "67"))
    out = env.output_dir / "lgJ"
    arch_key, text_key = "latentgraph.architecture", "latentgraph.text_encoder"
    for name, extra_meta in (("ckpt", {arch_key}), ("unet", {arch_key}), ("vae", set()), ("lorafull", set())):
        tensors, meta = _layout(out / f"{name}_00001_.safetensors")
        want, want_meta = _theirs(name)
        assert tensors == want, name
        assert set(meta) == set(want_meta) | extra_meta, name
    tensors, meta = _layout(out / "clip_clip_l_00001_.safetensors")
    want, want_meta = _theirs("clip_clip_l")
    assert set(want) - set(tensors) == {"text_projection.weight"}  # ComfyUI's unused CLIP-L projection
    assert tensors == {k: v for k, v in want.items() if k != "text_projection.weight"}
    assert set(meta) == set(want_meta) | {text_key}
    tensors, _ = _layout(out / "lora_00001_.safetensors")
    want, _ = _theirs("lora")
    proj = "text_encoders.clip_l.transformer.text_projection"
    assert set(want) - set(tensors) == {f"{proj}.lora_up.weight", f"{proj}.lora_down.weight"}
    assert tensors == {k: v for k, v in want.items() if not k.startswith(proj)}
    assert len(tensors) == 455


@pytest.mark.parametrize("family,files", [("sdxl", ("sdxl_ckpt", "sdxl_clip_clip_l", "sdxl_clip_clip_g")),
                                          ("sd2", ("sd2_ckpt", "sd2_clip_clip_h"))])
def test_sdxl_and_sd2_files_have_comfyuis_layout(tmp_path, family, files):
    root = tmp_path
    (root / "models" / "checkpoints").mkdir(parents=True)
    make_checkpoint(root / "models" / "checkpoints" / "m.safetensors", family, "tiny", seed=0)
    env = Environment(output_dir=root / "out", models_dir=root / "models", device="cpu")
    wf = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "m.safetensors"}},
          "s": {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                                          "filename_prefix": f"lgJ/{family}_ckpt"}},
          "c": {"class_type": "CLIPSave", "inputs": {"clip": ["1", 1], "filename_prefix": f"lgJ/{family}_clip"}}}
    Executor(create_registry(), env).run(wf)
    for name in files:
        tensors, meta = _layout(root / "out" / "lgJ" / f"{name}_00001_.safetensors")
        want, want_meta = _theirs(name)
        if name == "sdxl_clip_clip_l":
            want = {k: v for k, v in want.items() if k != "text_projection.weight"}
        assert tensors == want, name
        assert set(meta) - set(want_meta) <= {"latentgraph.architecture", "latentgraph.text_encoder"}, name
        assert set(want_meta) <= set(meta), name
    with safe_open(str(root / "out" / "lgJ" / f"{family}_ckpt_00001_.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.predict_key"] == ("v" if family == "sd2" else "epsilon")
    if family == "sdxl":
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"
        assert meta["modelspec.title"] == "sdxl_ckpt 1"


def test_merge_saved_and_loaded_samples_bit_for_bit(env, executor):
    """merge -> CheckpointSave -> CheckpointLoaderSimple gives the same latent as the merge in
    memory (merged UNet and merged CLIP); the file is named as ComfyUI names it and carries the
    prompt and the workflow."""
    sampler = {"seed": 5, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}

    def sample(wf: dict, model: list, clip: list) -> None:
        wf["p"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "a blue square"}}
        wf["n"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": clip, "text": "blurry"}}
        wf["k"] = {"class_type": "KSampler", "inputs": {"model": model, "positive": ["p", 0], "negative": ["n", 0],
                                                        "latent_image": ["5", 0], **sampler}}

    wf = _subgraph("10", "40", "5")
    wf["save"] = {"class_type": "CheckpointSave", "inputs": {"model": ["10", 0], "clip": ["40", 0], "vae": ["1", 2],
                                                             "filename_prefix": "checkpoints/ComfyUI"}}
    sample(wf, ["10", 0], ["40", 0])
    res = executor.run(wf, targets=["save", "k"], extra_data={"extra_pnginfo": {"workflow": {"nodes": [1, 2]}}})
    saved = env.output_dir / "checkpoints" / "ComfyUI_00001_.safetensors"
    assert res.outputs["save"] == {"models": [{"filename": "ComfyUI_00001_.safetensors", "subfolder": "checkpoints",
                                               "type": "output"}]}
    with safe_open(str(saved), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["prompt"])["save"]["class_type"] == "CheckpointSave"
    assert json.loads(meta["workflow"]) == {"nodes": [1, 2]}
    assert meta["modelspec.predict_key"] == "epsilon" and "modelspec.architecture" not in meta  # SD1: none, as ComfyUI
    (env.models_dir / "checkpoints" / "lgJ_saved.safetensors").write_bytes(saved.read_bytes())
    again = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "lgJ_saved.safetensors"}},
             "5": wf["5"]}
    sample(again, ["1", 0], ["1", 1])
    loaded = executor.run(again, targets=["k"])
    assert torch.equal(loaded.get("k")["samples"], res.get("k")["samples"])
    # the counter goes on from the highest file there
    wf["10"]["inputs"]["ratio"] = 0.6
    assert executor.run(wf, targets=["save"]).outputs["save"]["models"][0]["filename"] == "ComfyUI_00002_.safetensors"


def test_save_errors_name_the_node_and_the_limit(env, executor, monkeypatch):
    wf = _subgraph("1")
    (env.output_dir / "blocked").parent.mkdir(parents=True, exist_ok=True)
    (env.output_dir / "blocked").write_text("a file where a folder should be")
    wf["v"] = {"class_type": "VAESave", "inputs": {"vae": ["1", 2], "filename_prefix": "blocked/vae"}}
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["v"])
    assert info.value.node_id == "v"
    assert f"VAESave: cannot create the output folder {env.output_dir / 'blocked'}: " in str(info.value)
    wf["v"]["inputs"]["filename_prefix"] = "../outside/vae"
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["v"])
    assert "filename_prefix '../outside/vae' would write outside" in str(info.value)
    import shutil
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**12, 10**12 - 2**20, 2**20))
    wf["v"]["inputs"]["filename_prefix"] = "vae/full_disk"
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["v"])
    assert ("VAESave: full_disk_00001_.safetensors needs 4.8 MiB and the disk of "
            f"{env.output_dir / 'vae'} has 1 MiB free (keeping DISK_MARGIN, 64 MiB, spare)") in str(info.value)
    assert not list((env.output_dir / "vae").iterdir())  # nothing half-written


# -- LoRA extraction ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 1000, 40001])
def test_quantile_is_torch_quantile(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    for q in (0.0, 0.5, 0.99, 1.0):
        assert torch.equal(quantile(values, q), torch.quantile(values, q)), (n, q)


def test_low_rank_reproduces_a_known_delta_at_its_rank():
    g = torch.Generator().manual_seed(0)
    linear = torch.randn(48, 5, generator=g) @ torch.randn(5, 32, generator=g)
    up, down = low_rank(linear, 32, "linear", clamp=None)
    assert (up.shape, down.shape) == ((48, 32), (32, 32))
    assert float((up @ down - linear).abs().max() / linear.abs().max()) < 1e-5
    conv = (torch.randn(64, 8, generator=g) @ torch.randn(8, 32 * 9, generator=g)).reshape(64, 32, 3, 3)
    up, down = low_rank(conv, 8, "conv", clamp=None)
    assert (up.shape, down.shape) == ((64, 8, 1, 1), (8, 32, 3, 3))
    assert float(((up.flatten(1) @ down.flatten(1)).reshape(conv.shape) - conv).abs().max() / conv.abs().max()) < 1e-5
    # ComfyUI's clamp: both factors cut to +-(the 0.99 quantile of their values together), which
    # changes the product wherever U * S holds the largest values (here 58% of its largest entry)
    raw_up, raw_down = low_rank(linear, 5, "linear", clamp=None)
    hi = torch.quantile(torch.cat([raw_up.flatten(), raw_down.flatten()]), 0.99)
    up, down = low_rank(linear, 5, "linear")
    assert torch.equal(up, raw_up.clamp(-hi, hi)) and torch.equal(down, raw_down.clamp(-hi, hi))
    assert int((raw_up.abs() > hi).sum()) == 13 and float((up @ down - linear).abs().max()) > 1.0


def _run_lora_save(executor, env, prefix: str, lora_type: str, text: bool) -> dict:
    wf = _subgraph("65", "66")
    wf["save"] = {"class_type": "LoraSave", "inputs": {"filename_prefix": prefix, "rank": 8, "lora_type": lora_type,
                                                       "bias_diff": True, "model_diff": ["65", 0]}}
    if text:
        wf["save"]["inputs"]["text_encoder_diff"] = ["66", 0]
    executor.run(wf, targets=["save"])
    return load_file(env.output_dir / f"{prefix}_00001_.safetensors")


def test_extracted_lora_matches_comfyuis(env, executor):
    """Rank 8 from b - a (UNet and CLIP): ComfyUI's file key for key; each low-rank pair's product
    (signs of singular vectors may differ) and every whole difference within fp16 rounding."""
    ours = _run_lora_save(executor, env, "loras/lgJ_rank8", "standard", True)
    theirs = load_file(REF / "oracle_lora_rank8.safetensors")
    proj = "text_encoders.clip_l.transformer.text_projection"
    assert set(theirs) - set(ours) == {f"{proj}.lora_up.weight", f"{proj}.lora_down.weight"}
    pairs = 0
    for key, value in ours.items():
        assert value.dtype == torch.float16 and value.shape == theirs[key].shape, key
        if key.endswith(".lora_up.weight"):
            down = key[: -len("lora_up.weight")] + "lora_down.weight"
            mine = ours[key].float().flatten(1) @ ours[down].float().flatten(1)
            want = theirs[key].float().flatten(1) @ theirs[down].float().flatten(1)
            assert float((mine - want).abs().max() / want.abs().max()) < 1e-3, key
            pairs += 1
        elif not key.endswith(".lora_down.weight"):
            assert torch.equal(value, theirs[key]), key
    assert pairs == 133  # the UNet's and CLIP-L's weights of two or more dimensions
    assert sum(k.startswith("text_encoders.clip_l.") and k.endswith("lora_up.weight") for k in ours) == 14


def test_full_diff_lora_reproduces_the_delta(env, executor):
    """Extract b - a whole, load it on a with LoraLoaderModelOnly: b, to fp16 rounding of the delta."""
    _run_lora_save(executor, env, "lgJ_full", "full_diff", False)
    (env.models_dir / "loras" / "lgJ_full.safetensors").write_bytes(
        (env.output_dir / "lgJ_full_00001_.safetensors").read_bytes())
    wf = _subgraph("1", "2")
    wf["l"] = {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "lgJ_full.safetensors",
                                                               "strength_model": 1.0}}
    res = executor.run(wf, targets=["1", "2", "l"])
    wa, wb = _params(res.get("1", 0).unet), _params(res.get("2", 0).unet)
    got = _params(res.get("l").unet)
    assert len(got) == 286
    for k in wa:
        delta16 = (wb[k] * 1.0 + (-1.0) * wa[k]).half().float()
        assert torch.equal(got[k], wa[k] + delta16), k
        assert float((got[k] - wb[k]).abs().max()) <= float(wb[k].abs().max() - wa[k].abs().min()) * 1e-3 + 1e-6, k


def test_lora_save_with_nothing_writes_nothing(env, executor):
    executor.run({"s": {"class_type": "LoraSave", "inputs": {"filename_prefix": "loras/lgJ_none", "rank": 8,
                                                             "lora_type": "standard", "bias_diff": True}}})
    assert not list(env.output_dir.glob("loras/lgJ_none*"))


def test_extracted_lora_loads_on_model_and_clip(env, executor):
    """ComfyUI's rank-8 file, UNet and CLIP-L keys, through our LoraLoader: every pair is applied
    (up @ down added at strength 1), every bias difference added. (Its two keys for ComfyUI's
    unused CLIP-L text projection name no weight of ours; the loader's rule for such keys is
    test_lora's.)"""
    theirs = load_file(REF / "oracle_lora_rank8.safetensors")
    lora = (REF / "oracle_lora_rank8.safetensors").read_bytes()
    (env.models_dir / "loras" / "lgJ_rank8.safetensors").write_bytes(lora)
    wf = _subgraph("1")
    wf["l"] = {"class_type": "LoraLoader", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                      "lora_name": "lgJ_rank8.safetensors",
                                                      "strength_model": 1.0, "strength_clip": 1.0}}
    res = executor.run(wf, targets=["1", "l"])
    base, patched = _params(res.get("1", 1).encoders["l"]), _params(res.get("l", 1).encoders["l"])
    for layer in (0, 1):
        q = f"transformer.encoder.layers.{layer}.self_attn.q_proj.weight"
        name = f"text_encoders.clip_l.transformer.text_model.encoder.layers.{layer}.self_attn.q_proj"
        delta = theirs[f"{name}.lora_up.weight"].float() @ theirs[f"{name}.lora_down.weight"].float()
        torch.testing.assert_close(patched[q], base[q] + delta, rtol=0, atol=1e-6)
    unet_base, unet_patched = _params(res.get("1", 0).unet), _params(res.get("l", 0).unet)
    changed = sum(not torch.equal(unet_base[k], unet_patched[k]) for k in unet_base)
    # the weights a and b share (the norms' ones and zeros: make_checkpoint does not randomise
    # them) have zero differences in the file; every other weight changed
    unchanged = [k for k in unet_base if torch.equal(unet_base[k], unet_patched[k])]
    assert len(unchanged) == 90
    for k in unchanged:
        module, kind = k.rsplit(".", 1)
        assert not theirs[f"diffusion_model.{module}.{'diff' if kind == 'weight' else 'diff_b'}"].any(), k
    bias = "middle_block.0.in_layers.2.bias"
    assert torch.equal(unet_patched[bias], unet_base[bias] + theirs[f"diffusion_model.{bias[:-5]}.diff_b"].float())


def test_checkpoint_save_refuses_what_a_file_cannot_hold(executor):
    wf = _subgraph("1")
    wf["o"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other_sd2.safetensors"}}
    wf["s"] = {"class_type": "CheckpointSave", "inputs": {"model": ["1", 0], "clip": ["o", 1], "vae": ["1", 2],
                                                          "filename_prefix": "lgJ/mixed"}}
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["s"])
    assert ("CheckpointSave: clip is a Stable Diffusion 2.x text encoder and model a Stable Diffusion 1.x UNet; "
            "one checkpoint holds one family") in str(info.value)
    wf["lcm"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "lcm", "zsnr": False}}
    wf["s"]["inputs"].update(model=["lcm", 0], clip=["1", 1])
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["s"])
    assert "CheckpointSave: the model samples as 'LCMSchedule' (a ModelSampling node changed it); a checkpoint " \
           "file records " \
           "only eps or v prediction (and zsnr): save the model before that node" in str(info.value)
    # v prediction set by ModelSamplingDiscrete is what the file records (ComfyUI records the loaded type)
    wf["v"] = {"class_type": "ModelSamplingDiscrete", "inputs": {"model": ["1", 0], "sampling": "v_prediction",
                                                                "zsnr": True}}
    wf["s"]["inputs"].update(model=["v", 0], filename_prefix="lgJ/vpred")
    name = executor.run(wf, targets=["s"]).outputs["s"]["models"][0]["filename"]
    with safe_open(str(executor.env.output_dir / "lgJ" / name), "pt") as f:
        assert {"v_pred", "ztsnr"} <= set(f.keys()) and f.metadata()["modelspec.predict_key"] == "v"
        assert json.loads(f.metadata()["latentgraph.architecture"])["prediction"] == "v"


def test_fp16_weights_merge_in_float32_and_stay_fp16():
    from latentgraph.models.merge import merge_modules, simple

    g = torch.Generator().manual_seed(0)
    first, second = torch.nn.Linear(8, 8).half(), torch.nn.Linear(8, 8).half()
    with torch.no_grad():
        for p in (*first.parameters(), *second.parameters()):
            p.copy_(torch.randn(p.shape, generator=g))
    merged = merge_modules(first, second, simple(0.25), "test")
    assert merged.weight.dtype == torch.float16
    want = (first.weight.float() * 0.25 + 0.75 * second.weight.float()).half()
    assert torch.equal(merged.weight, want)


def test_model_merge_sd1_takes_a_ratio_per_block(executor):
    """ModelMergeSD1: the inputs are key prefixes ("input_blocks.4.", "out."); each weight takes
    the ratio of the block it is in (here the tiny UNet's blocks, fewer than SD1's 12 per side)."""
    wf = _subgraph("1", "2")
    ratios = {name: 1.0 for name in create_registry()["ModelMergeSD1"].inputs if name not in ("model1", "model2")}
    assert len(ratios) == 2 + 12 + 3 + 12 + 1
    ratios.update({"time_embed.": 0.1, "input_blocks.1.": 0.2, "middle_block.1.": 0.3, "output_blocks.1.": 0.4,
                   "out.": 0.5})
    wf["m"] = _n("ModelMergeSD1", model1=["1", 0], model2=["2", 0], **ratios)
    res = executor.run(wf, targets=["1", "2", "m"])
    w1, w2, got = _params(res.get("1", 0).unet), _params(res.get("2", 0).unet), _params(res.get("m").unet)
    for key, r in (("time_embed.2.weight", 0.1), ("input_blocks.1.1.proj_in.weight", 0.2),
                   ("middle_block.1.proj_out.bias", 0.3), ("output_blocks.1.0.in_layers.2.weight", 0.4),
                   ("out.2.bias", 0.5)):
        assert torch.equal(got[key], w1[key] * r + (1.0 - r) * w2[key]), key
    assert torch.equal(got["input_blocks.3.0.in_layers.2.weight"], w1["input_blocks.3.0.in_layers.2.weight"])
    for key in w1:  # every other weight is model1's (ratio 1)
        if not key.startswith(("time_embed.", "input_blocks.1.", "middle_block.1.", "output_blocks.1.", "out.")):
            assert torch.equal(got[key], w1[key]), key


def test_model_clip_and_vae_files_load_back(env, executor):
    """ModelSave -> UNETLoader, CLIPSave -> CLIPLoader, VAESave -> VAELoader: the same tensors
    (and, for CLIP, the same encoder shape: the file records its head count)."""
    wf = _subgraph("1")
    wf.update({"u": _n("ModelSave", model=["1", 0], filename_prefix="diffusion_models/lgJ"),
               "c": _n("CLIPSave", clip=["1", 1], filename_prefix="clip/lgJ"),
               "v": _n("VAESave", vae=["1", 2], filename_prefix="vae/lgJ_vae")})
    out = executor.run(wf, targets=["1", "u", "c", "v"])
    assert out.outputs["c"] == {"models": [{"filename": "lgJ_clip_l_00001_.safetensors", "subfolder": "clip",
                                            "type": "output"}]}
    for kind, name in (("diffusion_models", "lgJ_00001_"), ("clip", "lgJ_clip_l_00001_"), ("vae", "lgJ_vae_00001_")):
        (env.models_dir / kind).mkdir(exist_ok=True)
        (env.models_dir / kind / f"{name}.safetensors").write_bytes(
            (env.output_dir / kind / f"{name}.safetensors").read_bytes())
    back = executor.run({"ul": _n("UNETLoader", unet_name="lgJ_00001_.safetensors", weight_dtype="default"),
                         "cl": _n("CLIPLoader", clip_name="lgJ_clip_l_00001_.safetensors", type="stable_diffusion"),
                         "vl": _n("VAELoader", vae_name="lgJ_vae_00001_.safetensors")}, targets=["ul", "cl", "vl"])

    def same(a, b) -> bool:
        sa, sb = a.state_dict(), b.state_dict()
        return set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)

    assert same(out.get("1", 0).unet, back.get("ul").unet)
    assert same(out.get("1", 2).vae, back.get("vl").vae)
    assert same(out.get("1", 1).encoders["l"], back.get("cl").encoders["l"])
    assert out.get("1", 1).encoders["l"].config == back.get("cl").encoders["l"].config


def test_ui_widgets_map_to_the_inputs():
    """A UI workflow's widgets_values (as ComfyUI's frontend saves them) land on the inputs."""
    from latentgraph.graph.ui_format import map_widgets

    registry = create_registry()
    assert map_widgets(registry.get("ModelMergeSimple"), [0.3]) == {"ratio": 0.3}
    assert map_widgets(registry.get("ModelMergeBlocks"), [0.2, 0.7, 0.5]) == {"input": 0.2, "middle": 0.7, "out": 0.5}
    assert map_widgets(registry.get("CheckpointSave"), ["checkpoints/ComfyUI"]) == {
        "filename_prefix": "checkpoints/ComfyUI"}
    assert map_widgets(registry.get("LoraSave"), ["loras/x", 16, "full_diff", False]) == {
        "filename_prefix": "loras/x", "rank": 16, "lora_type": "full_diff", "bias_diff": False}
    sd1 = map_widgets(registry.get("ModelMergeSD1"), [0.5] * 30)
    assert list(sd1)[:3] == ["time_embed.", "label_emb.", "input_blocks.0."] and list(sd1)[-1] == "out."
    assert len(sd1) == 30 and set(sd1.values()) == {0.5}


def test_a_failed_write_leaves_no_file(env, executor, monkeypatch):
    import errno

    from latentgraph.nodes import model_save

    def full_disk(tensors, path, metadata):
        path.write_bytes(b"half a file")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model_save, "save_checkpoint", full_disk)
    wf = _subgraph("1")
    wf["v"] = _n("VAESave", vae=["1", 2], filename_prefix="lgJ_fail/vae")
    with pytest.raises(NodeExecutionError) as info:
        executor.run(wf, targets=["v"])
    assert (f"VAESave: could not write {env.output_dir / 'lgJ_fail' / 'vae_00001_.safetensors'}: "
            f"No space left on device") in str(info.value)
    assert [p.name for p in (env.output_dir / "lgJ_fail").iterdir()] == []

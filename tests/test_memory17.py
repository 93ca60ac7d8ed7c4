"""CPU memory (issue 17): streaming checkpoint loads, weights held once in the file's dtype where
that is exact, and memory given back by /free and Executor.release()."""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentgraph.graph import Environment, Executor
from latentgraph.graph.cache import release_memory
from latentgraph.models import cast
from latentgraph.models.checkpoint import (HELD_ROLES, build_text_encoders, load_checkpoint, read_state_dict,
                                           split_state_dict, strict_load, detect_architecture)
from latentgraph.models.errors import CheckpointError
from latentgraph.models.fp8 import CastConv2d, CastGroupNorm, CastLayerNorm, CastLinear
from latentgraph.models.lora import load_lora
from latentgraph.models.lora_make import make_lora_file
from latentgraph.models.make import make_checkpoint
from latentgraph.models.merge import merge_encoders, simple
from latentgraph.models.unet import UNetModel
from latentgraph.models.vae import AutoencoderKL

ROOT = Path(__file__).resolve().parents[1]
F32 = {role: torch.float32 for role in ("unet", "vae", "text")}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """The same tiny SD1.5 weights as an fp16 and an fp32 file, and a LoRA for them."""
    folder = tmp_path_factory.mktemp("memory17")
    out = {}
    for dtype in ("fp16", "fp32"):
        out[dtype] = folder / f"tiny_{dtype}.safetensors"
        make_checkpoint(out[dtype], family="sd15", seed=5, dtype=dtype)
    out["lora"] = folder / "lora.safetensors"
    make_lora_file(out["lora"], "sd15", "tiny", 5, "lora")
    return out


def _old_load(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """What loading did before streaming: every tensor read, all converted at once, one
    load_state_dict per network (the reference the streamed load must equal bit for bit)."""
    sd, metadata = read_state_dict(path)
    arch = detect_architecture(sd, metadata, str(path))
    parts = split_state_dict(sd, arch)
    with torch.device("meta"):
        nets = {"unet": UNetModel(arch.unet), "vae": AutoencoderKL(arch.vae),
                **{"text." + k: v for k, v in build_text_encoders(arch).items()}}
    out = {}
    for name, net in nets.items():
        tensors = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in parts[name].items()}
        net.load_state_dict(tensors, strict=True, assign=True)
        out[name] = net.state_dict()
    return out


def _all_tensors(ck) -> dict[str, dict[str, torch.Tensor]]:
    return {"unet": ck.unet.state_dict(), "vae": ck.vae.state_dict(),
            **{"text." + k: v.state_dict() for k, v in ck.text.items()}}


# -- streaming ---------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["fp16", "fp32"])
def test_streamed_load_is_bit_identical_to_the_old_path(files, dtype):
    old = _old_load(files[dtype])
    new = _all_tensors(load_checkpoint(files[dtype], dtypes=F32))
    assert set(new) == set(old) == {"unet", "vae", "text.l"}
    for net in old:
        assert list(new[net]) == list(old[net]), net
        for key, value in old[net].items():
            got = new[net][key]
            assert got.dtype == torch.float32 and torch.equal(got, value), f"{net}: {key}"


def test_a_tensor_already_in_the_run_dtype_is_the_files_own_memory(files):
    """fp32 file, fp32 run: the weights are views of the file mapping (no copy); fp16 file: the
    converted weights are our own allocations, outside the mapping."""
    kept = load_checkpoint(files["fp32"], dtypes=F32)
    mapped = cast.file_mappings(files["fp32"])
    assert mapped, "safetensors maps the file"
    params = list(kept.unet.parameters())
    inside = [p for p in params if any(lo <= p.data_ptr() < hi for lo, hi in mapped)]
    assert len(inside) == len(params) > 100
    converted = load_checkpoint(files["fp16"], dtypes=F32)
    assert not cast.file_mappings(files["fp16"])  # nothing of the fp16 file is held: not even its mapping
    assert all(p.dtype == torch.float32 for p in converted.unet.parameters())


def test_give_back_drops_the_pages_of_a_converted_view_and_nothing_else(tmp_path):
    path = tmp_path / "big.safetensors"
    save_file({"a": torch.arange(3 * 1024 * 1024, dtype=torch.float16).reshape(3, -1) / 7,
               "b": torch.ones(5, dtype=torch.float16)}, str(path))
    sd, _ = read_state_dict(path)
    mappings = cast.file_mappings(path)
    before = sd["a"].clone()
    dropped = cast.give_back(sd["a"], mappings)
    # the interior pages of 6 MiB of fp16; the edge pages may hold the header or "b"
    assert 6 * 1024 * 1024 - 2 * 4096 <= dropped <= 6 * 1024 * 1024
    assert torch.equal(sd["a"], before)  # read again from the file: the same values
    own = torch.ones(1 << 20)
    assert cast.give_back(own, mappings) == 0 and cast.give_back(own, []) == 0
    assert float(own.sum()) == float(1 << 20)  # an allocation of ours is never dropped


def test_strict_load_checks_keys_before_loading_anything(files):
    sd, metadata = read_state_dict(files["fp16"])
    arch = detect_architecture(sd, metadata, "f")
    vae_sd = dict(split_state_dict(sd, arch)["vae"])
    vae_sd["decoder.extra.weight"] = torch.zeros(2)
    del vae_sd["encoder.conv_in.bias"]
    with torch.device("meta"):
        vae = AutoencoderKL(arch.vae)
    with pytest.raises(CheckpointError) as err:
        strict_load(vae, vae_sd, "VAE", "f.safetensors", torch.float32)
    assert str(err.value) == ("f.safetensors: the VAE does not match the detected architecture; missing keys: "
                              "encoder.conv_in.bias; unexpected keys: decoder.extra.weight")
    assert all(p.is_meta for p in vae.parameters())  # refused before a single tensor was assigned


def test_streaming_keeps_a_modules_own_loading_code(files):
    """The VAE's AttnBlock reshapes Linear-shaped (C, C) projections in its _load_from_state_dict:
    streamed loads hand it its tensors as a group, so that still happens."""
    sd, metadata = read_state_dict(files["fp32"])
    arch = detect_architecture(sd, metadata, "f")
    vae_sd = dict(split_state_dict(sd, arch)["vae"])
    key = "decoder.mid.attn_1.q.weight"
    vae_sd[key] = vae_sd[key][:, :, 0, 0]
    with torch.device("meta"):
        vae = AutoencoderKL(arch.vae)
    assert cast._groups(vae, [key]) == {"decoder.mid.attn_1": [key]}
    strict_load(vae, vae_sd, "VAE", "f", torch.float32, linear_as_conv=True)
    assert vae.decoder.mid.attn_1.q.weight.shape[-2:] == (1, 1)
    assert torch.equal(vae.decoder.mid.attn_1.q.weight[:, :, 0, 0], vae_sd[key])


PEAK_CHILD = textwrap.dedent("""
    import json, sys, torch
    from torch import nn
    from latentgraph.models import checkpoint
    from latentgraph.models.checkpoint import read_state_dict, strict_load

    def old(module, sd, what, source, dtype, *a, **k):
        sd = {key: v.to(dtype) for key, v in sd.items()}
        module.load_state_dict(sd, strict=False, assign=True)

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    load = old if sys.argv[2] == "old" else strict_load
    with torch.device("meta"):
        net = nn.Sequential(*[nn.Linear(2048, 2048, bias=False) for _ in range(16)])
    sd, _ = read_state_dict(sys.argv[1])
    base = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    load(net, sd, "net", sys.argv[1], torch.float32)
    print(json.dumps({"peak": rss("VmHWM") - base, "after": rss("VmRSS") - base}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self; pages are given back on Linux")
def test_loading_an_fp16_file_in_fp32_peaks_at_the_weights_not_weights_plus_file(tmp_path):
    """64 Mi fp16 values (128 MiB file) into fp32 (256 MiB): the old way also holds the file's
    pages, the streamed way one tensor's at most. Measured in fresh processes, wide margins."""
    path = tmp_path / "net.safetensors"
    gen = torch.Generator().manual_seed(0)
    save_file({f"{i}.weight": torch.randn(2048, 2048, generator=gen).half() for i in range(16)}, str(path))
    weights, file_bytes = 16 * 2048 * 2048 * 4, 16 * 2048 * 2048 * 2

    def peak(way: str) -> dict:
        out = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(path), way], capture_output=True, text=True,
                             cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    new, old = peak("new"), peak("old")
    assert old["peak"] > weights + 0.7 * file_bytes, old  # the file's pages are mapped beside the copy
    assert new["peak"] < weights + 0.3 * file_bytes, new  # the weights plus about one 8 MiB tensor
    assert new["after"] < weights + 0.3 * file_bytes, new


# -- held in the file's dtype, cast per layer ------------------------------------------------------
@pytest.fixture(scope="module")
def pair(files):
    """The fp16 file loaded converted (fp32 everywhere) and held (text encoder and VAE in fp16)."""
    return (load_checkpoint(files["fp16"], dtypes=F32),
            load_checkpoint(files["fp16"], dtypes=F32, hold=HELD_ROLES))


def test_held_networks_have_the_documented_dtypes(pair):
    converted, held = pair
    enc, vae = held.text["l"], held.vae
    layer = enc.transformer.encoder.layers[0]
    assert type(layer.self_attn.q_proj) is CastLinear and layer.self_attn.q_proj.weight.dtype == torch.float16
    assert type(layer.layer_norm1) is CastLayerNorm and layer.layer_norm1.weight.dtype == torch.float16
    # embeddings and the VAE's quant convs are converted: their dtype is what the network computes in
    assert enc.transformer.embeddings.token_embedding.weight.dtype == torch.float32
    assert vae.quant_conv.weight.dtype == vae.post_quant_conv.weight.dtype == vae.dtype == torch.float32
    assert type(vae.decoder.conv_in) is CastConv2d and vae.decoder.conv_in.weight.dtype == torch.float16
    assert type(vae.decoder.norm_out) is CastGroupNorm
    assert all(p.dtype == torch.float32 for p in held.unet.parameters())  # the UNet is never held
    assert cast.parameter_bytes(held.unet) == cast.parameter_bytes(converted.unet)
    conv_bytes = cast.parameter_bytes(converted.vae)
    quant = sum(p.numel() for m in (vae.quant_conv, vae.post_quant_conv) for p in m.parameters())
    assert cast.parameter_bytes(vae) == (conv_bytes - quant * 4) // 2 + quant * 4
    emb = sum(p.numel() for p in enc.transformer.embeddings.parameters())
    text_values = sum(p.numel() for p in enc.parameters())
    assert cast.parameter_bytes(enc) == emb * 4 + (text_values - emb) * 2


def test_held_text_encoder_and_vae_give_the_converted_results_bit_for_bit(pair):
    converted, held = pair
    ids = torch.randint(0, 49406, (2, 77), generator=torch.Generator().manual_seed(1))
    for a, b in zip(converted.text["l"](ids), held.text["l"](ids)):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b)
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    image = converted.vae.decode(z)
    assert torch.equal(image, held.vae.decode(z))
    assert torch.equal(converted.vae.encode(image), held.vae.encode(image))


def test_a_lora_on_a_held_text_encoder_matches_the_converted_path(pair, files):
    converted, held = pair
    results = []
    for ck in (converted, held):
        loaded = load_lora(files["lora"], "sd15", ck.unet, ck.text, 0.8, 0.7)
        assert loaded.warning is None
        results.append(loaded)
    q_conv = results[0].text["l"].transformer.encoder.layers[0].self_attn.q_proj
    q_held = results[1].text["l"].transformer.encoder.layers[0].self_attn.q_proj
    # the patched weight is stored in the compute dtype, not rounded back to the file's fp16
    assert q_held.weight.dtype == torch.float32 and torch.equal(q_held.weight, q_conv.weight)
    assert not torch.equal(q_held.weight, held.text["l"].transformer.encoder.layers[0].self_attn.q_proj.weight.float())
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(3))
    for a, b in zip(results[0].text["l"](ids), results[1].text["l"](ids)):
        assert torch.equal(a, b)
    # the held base is unchanged: still fp16, still a cast layer
    assert held.text["l"].transformer.encoder.layers[0].self_attn.q_proj.weight.dtype == torch.float16


def test_a_clip_merge_of_held_encoders_matches_the_converted_path(pair):
    converted, held = pair
    a = merge_encoders(converted.text, converted.text, simple(0.3), "m")
    b = merge_encoders(held.text, held.text, simple(0.3), "m")
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(4))
    for x, y in zip(a["l"](ids), b["l"](ids)):
        assert torch.equal(x, y)


def test_an_fp32_file_is_not_held(files):
    ck = load_checkpoint(files["fp32"], dtypes=F32, hold=HELD_ROLES)
    assert not any(isinstance(m, (CastLinear, CastConv2d)) for m in [*ck.vae.modules(), *ck.text["l"].modules()])


# -- giving memory back ------------------------------------------------------------------------
def _txt2img(ckpt: str, seed: int) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": 1, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


@pytest.fixture
def sd_executor(tmp_path, files):
    from latentgraph.nodes import create_registry, create_services

    models = tmp_path / "models" / "checkpoints"
    models.mkdir(parents=True)
    for name in ("fp16", "fp32"):
        (models / f"{name}.safetensors").symlink_to(files[name])
    env = Environment(models_dir=tmp_path / "models", output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                      temp_dir=tmp_path / "temp", device="cpu", dtype="fp32")
    return Executor(create_registry(), env, services=create_services(env))


def _weights(models) -> list[weakref.ref]:
    return [weakref.ref(p) for ck in models._items.values() for p in ck.unet.parameters()]


def test_release_drops_every_model_and_result(sd_executor):
    ex, models = sd_executor, sd_executor.services["models"]
    ex.run(_txt2img("fp16.safetensors", 1))
    refs = _weights(models)
    assert len(models) == 1 and len(ex.cache) > 0 and refs
    models.clear()
    gc.collect()
    assert all(r() is not None for r in refs)  # the cached loader output still holds the model
    ex.release()
    assert len(ex.cache) == 0 and all(r() is None for r in refs)


def test_alternating_checkpoints_keeps_one_model_alive_at_a_time(sd_executor):
    """Each prompt switches checkpoint and loads it afresh (everything released between): no
    network outlives its release, so nothing accumulates."""
    ex, models = sd_executor, sd_executor.services["models"]
    gc.collect()
    before = _unets()  # other tests' networks (module fixtures)
    for i in range(6):
        ex.run(_txt2img(("fp16", "fp32")[i % 2] + ".safetensors", i))
        assert len(_unets() - before) == 1, i
        models.clear()
        ex.release()
        assert not _unets() - before, i
    assert models.loads == 6


def _unets() -> set[int]:
    return {id(o) for o in gc.get_objects() if type(o) is UNetModel}


def test_release_memory_asks_glibc_to_trim():
    assert release_memory() is (sys.platform.startswith("linux") and cast._LIBC is not None)


def test_post_free_drops_the_models_and_their_weights(tmp_path, files):
    from aiohttp.test_utils import TestClient, TestServer

    from latentgraph.nodes import create_registry, create_services
    from latentgraph.server import create_app

    models_dir = tmp_path / "models" / "checkpoints"
    models_dir.mkdir(parents=True)
    (models_dir / "tiny.safetensors").symlink_to(files["fp16"])
    env = Environment(output_dir=tmp_path / "output", input_dir=tmp_path / "input", temp_dir=tmp_path / "temp",
                      models_dir=tmp_path / "models", device="cpu", dtype="fp32")
    services = create_services(env)
    app = create_app(create_registry(), env, services=services, user_dir=tmp_path / "user", frontend="none")

    async def until(check, what: str) -> None:
        for _ in range(200):
            if check():
                return
            await asyncio.sleep(0.05)
        raise AssertionError(what)

    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            r = await client.post("/prompt", json={"prompt": _txt2img("tiny.safetensors", 1)})
            pid = (await r.json())["prompt_id"]
            for _ in range(600):
                history = await (await client.get(f"/history/{pid}")).json()
                if history:
                    break
                await asyncio.sleep(0.05)
            assert history[pid]["status"]["status_str"] == "success"
            models = services["models"]
            refs = _weights(models)
            assert len(models) == 1 and refs
            # unload_models alone: the model cache lets go, the cached results still hold the weights
            assert (await client.post("/free", json={"unload_models": True})).status == 200
            await until(lambda: len(models) == 0, "unload_models did not empty the model cache")
            assert all(r() is not None for r in refs)
            assert (await client.post("/free", json={"free_memory": True})).status == 200
            await until(lambda: all(r() is None for r in refs), "free_memory left weights alive")

    asyncio.run(asyncio.wait_for(go(), 120))


def test_split_vae_and_text_encoder_files_can_be_held_too(files, tmp_path):
    from latentgraph.models.families import VAE_PREFIX
    from latentgraph.models.make_split import make_text_encoder
    from latentgraph.models.split_files import load_clip_files, load_vae_any

    sd, _ = read_state_dict(files["fp16"])
    vae_file, text_file = tmp_path / "vae.safetensors", tmp_path / "clip_l.safetensors"
    save_file({k[len(VAE_PREFIX):]: v.contiguous() for k, v in sd.items() if k.startswith(VAE_PREFIX)}, str(vae_file))
    make_text_encoder(text_file, "sd15", seed=5, dtype="fp16")
    plain, held = load_vae_any(vae_file, torch.float32), load_vae_any(vae_file, torch.float32, hold=True)
    assert plain.decoder.conv_in.weight.dtype == torch.float32 and held.decoder.conv_in.weight.dtype == torch.float16
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    assert torch.equal(plain.decode(z), held.decode(z))
    (_, plain_text), (_, held_text) = (load_clip_files([text_file], "stable_diffusion", torch.float32, hold=h)
                                       for h in (False, True))
    assert type(held_text["l"].transformer.final_layer_norm) is CastLayerNorm
    ids = torch.randint(0, 49406, (1, 77), generator=torch.Generator().manual_seed(7))
    for a, b in zip(plain_text["l"](ids), held_text["l"](ids)):
        assert torch.equal(a, b)


def test_the_end_of_a_local_batch_releases_models_and_results(sd_executor):
    from latentgraph.batch import LocalRunner

    ex, models = sd_executor, sd_executor.services["models"]
    ex.run(_txt2img("fp16.safetensors", 1))
    refs = _weights(models)
    assert len(models) == 1 and len(ex.cache) > 0 and refs
    LocalRunner(ex).close()
    assert len(models) == 0 and len(ex.cache) == 0 and all(r() is None for r in refs)

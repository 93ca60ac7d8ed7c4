"""Checkpoints: every family at tiny size written in the original layout, read back strictly
and detected; detection from keys alone, also at full size (on the meta device); refusal of
pickles; clear errors; the CLIP object; latent conventions; placement and the model cache."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.models.checkpoint import (CheckpointError, _prediction, build_text_encoders, detect_architecture,
                                           load_checkpoint, original_layout, read_state_dict)
from latentgraph.models.clip import TextModel
from latentgraph.models.families import (FAMILIES, METADATA_KEY, Architecture, full_architecture, sdxl_adm,
                                         tiny_architecture)
from latentgraph.models.latent import crop_to_multiple, decode_latent, encode_image
from latentgraph.models.make import make_checkpoint, random_networks
from latentgraph.models.management import ModelCache, Placement, resolve_device, resolve_dtypes
from latentgraph.models.unet import UNetModel
from latentgraph.models.vae import AutoencoderKL
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
TINY_OVERRIDES = {"unet_num_head_channels": 16, "text_num_heads": 2}


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    return {fam: (folder / f"{fam}.safetensors", make_checkpoint(folder / f"{fam}.safetensors", fam, "tiny", seed=3))
            for fam in ("sd15", "sd2", "sdxl")}


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_tiny_checkpoint_round_trip(tiny_files, family):
    path, arch = tiny_files[family]
    sd, meta = read_state_dict(path)
    assert json.loads(meta[METADATA_KEY])["family"] == family
    # the original single-file layout
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in sd)
    assert any(k.startswith("first_stage_model.encoder.") for k in sd)
    text_prefix = {"sd15": "cond_stage_model.transformer.text_model.", "sd2": "cond_stage_model.model.transformer.",
                   "sdxl": "conditioner.embedders.1.model.transformer.resblocks."}[family]
    assert any(k.startswith(text_prefix) for k in sd)
    ck = load_checkpoint(path)
    assert ck.arch.family == family and ck.arch.prediction == ("v" if family == "sd2" else "eps")
    unet, vae, text = random_networks(arch, seed=3)
    for ours, theirs in ((ck.unet, unet), (ck.vae, vae), *((ck.text[n], text[n]) for n in text)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl"])
def test_tiny_models_run(tiny_files, family):
    path, _ = tiny_files[family]
    ck = load_checkpoint(path)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    text = TextModel(ck.arch, ck.text, Placement())
    cond, pooled = text.encode("a red circle, (blue:1.2) background")
    assert cond.shape == (1, 77, ck.arch.unet.context_dim)
    y = None
    if family == "sdxl":
        assert cond.shape[-1] == 32 and pooled.shape == (1, 16)
        y = sdxl_adm(pooled, 64, 64).repeat(2, 1)
    with torch.no_grad():
        out = ck.unet(x, torch.tensor([999.0, 10.0]), cond.repeat(2, 1, 1), y)
        again = ck.unet(x, torch.tensor([999.0, 10.0]), cond.repeat(2, 1, 1), y)
    assert out.shape == x.shape and torch.equal(out, again)
    image = decode_latent(ck.vae, x[:1])
    assert image.shape == (1, 64, 64, 3) and 0 <= image.min() and image.max() <= 1
    assert encode_image(ck.vae, image).shape == (1, 4, 8, 8)


def test_detection_from_keys_alone(tmp_path):
    """Without our metadata the family and shapes come from the keys; head counts, which
    shapes cannot show, are given as overrides (full-size files use the families' defaults)."""
    for family in ("sd15", "sd2", "sdxl"):
        path = tmp_path / f"{family}.safetensors"
        make_checkpoint(path, family, "tiny", write_metadata=False)
        sd, meta = read_state_dict(path)
        assert METADATA_KEY not in meta
        overrides = {"unet_num_heads": 8, "text_num_heads": 2} if family == "sd15" else TINY_OVERRIDES
        arch = detect_architecture(sd, meta, str(path), overrides)
        want = tiny_architecture(family)
        assert arch.family == family
        assert arch.unet == want.unet and arch.vae == want.vae and arch.text == want.text
        assert arch.prediction == "eps"  # tiny SD2 has no 768-v marker without metadata
        load_checkpoint(path, overrides=overrides)


@pytest.mark.parametrize("family", ["sd15", "sd2", "sdxl", "sdxl_refiner"])
def test_full_size_layouts_are_detected(family):
    """The published architectures, laid out as real files, on the meta device (no memory)."""
    arch = full_architecture(family)
    with torch.device("meta"):
        unet, vae = UNetModel(arch.unet), AutoencoderKL(arch.vae)
        text = build_text_encoders(arch)
        sd = original_layout(arch, unet, vae, text)
    if family == "sd2":
        sd.pop("v_pred", None)  # SD2 marks v-prediction by its weights, not a key
    found = detect_architecture(sd, None, family)
    assert found.family == family
    assert found.unet == arch.unet and found.vae == arch.vae and found.text == arch.text
    # UNet + VAE (83,653,863) + text encoders; SD1.5's 1.07B and SDXL's 3.47B are the published totals
    counts = {"sd15": 1_066_235_307, "sd2": 1_303_597_227, "sdxl": 3_468_837_867, "sdxl_refiner": 3_037_840_363}
    total = sum(v.numel() for k, v in sd.items() if not k.endswith("logit_scale") and v.numel() > 0)
    assert total == counts[family]


def test_comfyui_reference_files_load_strictly_and_bit_identically():
    for name, family, overrides in (("tiny_sd15", "sd15", {"unet_num_heads": 8, "text_num_heads": 2}),
                                    ("tiny_sdxl", "sdxl", TINY_OVERRIDES)):
        path = REF / f"{name}.safetensors"
        ck = load_checkpoint(path, overrides=overrides)
        assert ck.arch.family == family
        spec = json.loads((REF / f"{name}.json").read_text())
        kwargs = spec.get("unet", {}).get("kwargs") or spec["unet_kwargs"]
        assert ck.arch.unet.model_channels == kwargs["model_channels"]
        assert ck.arch.unet.context_dim == kwargs["context_dim"]
        raw = load_file(path)
        unet_sd = ck.unet.state_dict()
        assert all(torch.equal(unet_sd[k[len("model.diffusion_model."):]], v)
                   for k, v in raw.items() if k.startswith("model.diffusion_model."))


def test_weighted_prompt_parity_through_the_clip_object():
    ck = load_checkpoint(REF / "tiny_sd15.safetensors", overrides={"unet_num_heads": 8, "text_num_heads": 2})
    ref = load_file(REF / "tiny_sd15_ref.safetensors")
    text = TextModel(ck.arch, ck.text, Placement())
    for prompt, key in (("(a red circle:1.3) on blue", "weighted"), ("a red circle", "a_red_circle")):
        cond, pooled = text.encode(prompt)
        assert (cond - ref[f"clip/{key}/cond"]).abs().max() < 1e-5, key
        assert (pooled - ref[f"clip/{key}/pooled"]).abs().max() < 1e-5, key
    cond, _ = text.with_clip_skip(-2).encode("a red circle")
    assert (cond - ref["clip/a_red_circle_clipskip2/cond"]).abs().max() < 1e-5
    assert text.layer_idx is None  # the copy changed, not the original
    with pytest.raises(ValueError):
        text.with_clip_skip(-5)


def test_sdxl_clip_object_and_adm_parity():
    ck = load_checkpoint(REF / "tiny_sdxl.safetensors", overrides=TINY_OVERRIDES)
    ref = load_file(REF / "tiny_sdxl_ref.safetensors")
    cond, pooled = TextModel(ck.arch, ck.text, Placement()).encode("a red circle")
    assert (cond - ref["clip/a_red_circle/cond"]).abs().max() < 1e-5
    assert (pooled - ref["clip/a_red_circle/pooled"]).abs().max() < 1e-5
    y = sdxl_adm(ref["clip/a_red_circle/pooled"], 64, 64)
    # the size embedding's sin/cos of float32 arguments differ in the last bits between torch
    # builds (2.13 matches ComfyUI's bits, 2.14 is 2e-6 off): a float32 tolerance, not equality
    assert y.shape == (1, 1552) and (y - ref["adm/y_a_red_circle_64x64"]).abs().max() < 1e-5


def test_vae_conventions_match_comfyui():
    ck = load_checkpoint(REF / "tiny_sd15.safetensors", overrides={"unet_num_heads": 8, "text_num_heads": 2})
    ref = load_file(REF / "tiny_sd15_ref.safetensors")
    image = decode_latent(ck.vae, ref["vae/decode_in_latent"])
    assert (image - ref["vae/decode_out_image"]).abs().max() < 1e-5
    latent = encode_image(ck.vae, ref["vae/test_image"])
    assert (latent - ref["vae/encode_out_latent"]).abs().max() < 1e-5
    odd = torch.rand(1, 67, 70, 4)
    cropped = crop_to_multiple(odd[..., :3], 8)
    assert cropped.shape == (1, 64, 64, 3) and torch.equal(cropped, odd[:, 1:65, 3:67, :3])
    assert encode_image(ck.vae, odd).shape == (1, 4, 8, 8)


def test_pickled_checkpoints_are_refused_and_plain_ones_load(tmp_path):
    sd = load_file(REF / "tiny_sd15.safetensors")
    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": sd}, plain)
    assert load_checkpoint(plain, overrides={"unet_num_heads": 8, "text_num_heads": 2}).arch.family == "sd15"
    evil = tmp_path / "evil.ckpt"
    script = ("import torch, collections\n"
              "class Payload:\n    pass\n"
              f"torch.save({{'state_dict': {{}}, 'extra': Payload()}}, {str(evil)!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True)
    with pytest.raises(CheckpointError, match=r"refused: the file needs Python objects .*said: Unsupported global: "
                                              r"GLOBAL __main__.Payload") as info:
        load_checkpoint(evil)
    assert "\x1b" not in str(info.value)


def test_pickle_names_holding_other_formats(tmp_path):
    """A renamed safetensors file (.pth) is read as safetensors, a pickle in torch's pre-1.6 format
    loads without memory-mapping, and torch's colour codes stay out of the messages."""
    from latentgraph.models.checkpoint import read_state_dict

    tensors = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(4, dtype=torch.float16)}
    renamed = tmp_path / "adapter.pth"
    save_file(tensors, str(renamed), metadata={"k": "v"})
    sd, meta = read_state_dict(renamed)
    assert sorted(sd) == ["a.weight", "b"] and torch.equal(sd["a.weight"], tensors["a.weight"]) and meta["k"] == "v"
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": tensors}, legacy, _use_new_zipfile_serialization=False)
    sd, meta = read_state_dict(legacy)
    assert torch.equal(sd["b"], tensors["b"]) and meta == {}
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x1b[1mnot a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk.pth: not a readable PyTorch checkpoint \(") as info:
        read_state_dict(junk)
    assert "\x1b" not in str(info.value)
    short = tmp_path / "short.bin"
    short.write_bytes((10**9).to_bytes(8, "little") + b"{}")  # a header longer than the file: not safetensors
    with pytest.raises(CheckpointError, match=r"short.bin: not a readable PyTorch checkpoint"):
        read_state_dict(short)


def test_errors_say_what_was_found(tmp_path):
    junk = tmp_path / "junk.safetensors"
    save_file({"foo.weight": torch.zeros(2), "bar.bias": torch.zeros(1)}, str(junk))
    with pytest.raises(CheckpointError, match=r"not a Stable Diffusion checkpoint: no UNet .*2 tensors: "):
        load_checkpoint(junk)
    (tmp_path / "text.safetensors").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path / "text.safetensors")
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")
    sd = load_file(REF / "tiny_sd15.safetensors")
    unet_only = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))
    with pytest.raises(CheckpointError, match="no text encoder found .* context width 32"):
        load_checkpoint(tmp_path / "unet.safetensors")
    broken = dict(sd)
    broken.pop("model.diffusion_model.out.2.bias")
    broken["first_stage_model.decoder.extra.weight"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "broken.safetensors", overrides={"unet_num_heads": 8, "text_num_heads": 2})
    assert "UNet does not match" in str(info.value) and "out.2.bias" in str(info.value)
    broken["model.diffusion_model.out.2.bias"] = sd["model.diffusion_model.out.2.bias"]
    save_file(broken, str(tmp_path / "broken2.safetensors"))
    with pytest.raises(CheckpointError, match="VAE does not match.*unexpected keys: decoder.extra.weight"):
        load_checkpoint(tmp_path / "broken2.safetensors", overrides={"unet_num_heads": 8, "text_num_heads": 2})


def test_prediction_markers():
    assert _prediction(FAMILIES["sdxl"], {"v_pred": torch.tensor([])}) == ("v", False)
    assert _prediction(FAMILIES["sdxl"], {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}) == ("v", True)
    assert _prediction(FAMILIES["sdxl"], {}) == ("eps", False)
    key = "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.norm1.bias"
    assert _prediction(FAMILIES["sd2"], {key: torch.linspace(-1, 1, 320)})[0] == "v"
    assert _prediction(FAMILIES["sd2"], {key: torch.full((320,), 0.01)})[0] == "eps"


def test_architecture_metadata_round_trip():
    for family in FAMILIES:
        arch = full_architecture(family)
        assert Architecture.from_json(arch.to_json()) == arch
    with pytest.raises(ValueError, match="unknown family"):
        Architecture.from_json('{"family": "sd9"}')


def test_placement_and_model_cache():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_dtypes(torch.device("cpu")) == {"unet": torch.float32, "text": torch.float32, "vae": torch.float32}
    assert resolve_dtypes(torch.device("cpu"), "bf16")["unet"] == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtypes(torch.device("cpu"), "fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA device"):
            resolve_device("cuda")
    placement = Placement.from_options("cpu", "auto", lowvram=True)
    assert placement.offload is False  # nothing to offload to on the CPU
    cache = ModelCache(max_items=2)
    loads = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get_or_load((key,), lambda key=key: loads.append(key) or key.upper())
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2


def test_make_checkpoint_cli(tmp_path):
    out = tmp_path / "cli.safetensors"
    proc = subprocess.run([sys.executable, "-m", "latentgraph", "make-checkpoint", "--family", "sdxl", "--size", "tiny",
                           str(out), "--seed", "5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Stable Diffusion XL (tiny, eps-prediction, fp32)" in proc.stdout
    assert load_checkpoint(out).arch.family == "sdxl"
    proc = subprocess.run([sys.executable, "-m", "latentgraph", "make-checkpoint", "--family", "sd9", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'sd9'" in proc.stderr


def test_standalone_vae_files(tmp_path):
    sd = load_file(REF / "tiny_sd15.safetensors")
    vae_only = {k[len("first_stage_model."):]: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    vae_only["model_ema.decay"] = torch.tensor(0.999)
    vae_only["loss.logvar"] = torch.zeros(1)
    save_file(vae_only, str(tmp_path / "vae-ft-tiny.safetensors"))
    from latentgraph.models.checkpoint import load_vae_file

    vae = load_vae_file(tmp_path / "vae-ft-tiny.safetensors")
    ref = load_file(REF / "tiny_sd15_ref.safetensors")
    assert (decode_latent(vae, ref["vae/decode_in_latent"]) - ref["vae/decode_out_image"]).abs().max() < 1e-5
    assert load_vae_file(REF / "tiny_sd15.safetensors").config == vae.config  # prefixed keys work too
    with pytest.raises(CheckpointError, match="not a VAE"):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "x.safetensors"))
        load_vae_file(tmp_path / "x.safetensors")


def test_load_placed_uses_the_cache_by_file_identity(tiny_files, tmp_path):
    from latentgraph.models.checkpoint import load_placed

    path, _ = tiny_files["sd15"]
    cache = ModelCache()
    placement = Placement()
    a = load_placed(path, placement, cache)
    assert load_placed(path, placement, cache) is a and cache.loads == 1
    bf16 = Placement(dtypes={"unet": torch.bfloat16, "text": torch.float32, "vae": torch.float32})
    b = load_placed(path, bf16, cache)
    assert b is not a and next(b.unet.parameters()).dtype == torch.bfloat16 and cache.loads == 2
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    load_placed(copy, placement, cache)
    assert cache.loads == 3  # another file, another entry

"""Step previews: the TAESD decoder module (published key layout, strict loading, refusals),
the preview method and decoder choice (nodes/preview.py), the run's method from extra_data,
--preview-size, the shipped demo decoder against the full VAE decode, and preview frames
through the server."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from safetensors.torch import save_file

from latentgraph.graph import IMAGE, Environment, Executor, NodeContext, Workflow, node
from latentgraph.graph.env import SHIPPED_MODELS
from latentgraph.models.errors import CheckpointError
from latentgraph.models.families import tiny_architecture
from latentgraph.models.taesd import TAESDDecoder, load_taesd_decoder
from latentgraph.nodes import create_registry, create_services
from latentgraph.nodes.preview import (ARCH_KEY, PreviewDecoders, architecture_id, find_decoder, fit_preview,
                                       latent2rgb, preview_factory, resolve_method, run_method)
from latentgraph.sampling.schedule import PLAYGROUND_V25, LatentFormat
from latentgraph.server import create_app
from test_server import until_done  # a prompt's messages and binary frames until it ends
from latentgraph.server.app import SERVER

ROOT = Path(__file__).resolve().parents[1]
DEMO = "latentgraph-shapes.safetensors"
DEMO_DECODER = SHIPPED_MODELS / "vae_approx" / "latentgraph-shapes_taesd_decoder.safetensors"
# the published taesd_decoder keys, written out: Clamp 0, conv 1, ReLU 2, Blocks 3-5, Upsample 6,
# conv 7 (no bias), Blocks 8-10, Upsample 11, conv 12, Blocks 13-15, Upsample 16, conv 17, Block 18, conv 19
BLOCKS = (3, 4, 5, 8, 9, 10, 13, 14, 15, 18)
PUBLISHED_KEYS = ({"1.weight", "1.bias", "7.weight", "12.weight", "17.weight", "19.weight", "19.bias"}
                  | {f"{b}.conv.{c}.{p}" for b in BLOCKS for c in (0, 2, 4) for p in ("weight", "bias")})


def random_decoder(path: Path, width: int = 64, channels: int = 4, metadata: dict | None = None) -> dict:
    torch.manual_seed(width)
    sd = {k: v.clone() for k, v in TAESDDecoder(channels, width).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata=metadata)
    return sd


def fake_model(family: str = "sd15", fmt=None):
    """What the previews read of a MODEL: latent format, architecture, device."""
    arch = tiny_architecture(family)
    return SimpleNamespace(latent_format=fmt or LatentFormat(arch.spec.latent_scale), arch=arch,
                           placement=SimpleNamespace(device=torch.device("cpu")))


def make_env(root: Path) -> Environment:
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))


# -- the module ------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [64, 32])
def test_a_decoder_in_the_published_layout_loads_strictly(tmp_path, width):
    path = tmp_path / "taesd_decoder.safetensors"
    sd = random_decoder(path, width)
    assert set(sd) == PUBLISHED_KEYS and sd["19.weight"].shape == (3, width, 3, 3)
    decoder = load_taesd_decoder(path)
    assert (decoder.width, decoder.latent_channels) == (width, 4)
    assert all(torch.equal(v, sd[k]) for k, v in decoder.state_dict().items())
    z = torch.randn(2, 4, 5, 7) * 3
    with torch.no_grad():
        out = decoder(z)
    assert out.shape == (2, 3, 40, 56) and float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_a_pth_decoder_is_read_only_as_plain_tensors(tmp_path):
    plain, hostile = tmp_path / "taesd_decoder.pth", tmp_path / "evil_decoder.pth"
    torch.save(TAESDDecoder(4, 16).state_dict(), plain)
    assert load_taesd_decoder(plain).width == 16
    torch.save({"1.weight": torch.zeros(16, 4, 3, 3), "x": SimpleNamespace(a=1)}, hostile)
    with pytest.raises(CheckpointError, match="refused"):
        load_taesd_decoder(hostile)


def test_other_files_are_refused_naming_the_file(tmp_path):
    sd = TAESDDecoder(4, 32).state_dict()
    prefixed = tmp_path / "prefixed.safetensors"
    save_file({"taesd_decoder." + k: v for k, v in sd.items()}, str(prefixed))
    with pytest.raises(CheckpointError, match=r"prefixed\.safetensors: not a TAESD decoder.*published"):
        load_taesd_decoder(prefixed)
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in sd.items() if k != "19.bias"}, str(short))
    with pytest.raises(CheckpointError, match=r"short\.safetensors: .*width 32.*19\.bias"):
        load_taesd_decoder(short)
    wide = tmp_path / "taef1_decoder.safetensors"
    random_decoder(wide, 32, channels=16)
    with pytest.raises(CheckpointError, match=r"taef1_decoder\.safetensors: .*16-channel"):
        load_taesd_decoder(wide)


# -- the choice of method and decoder ----------------------------------------------------------
def test_the_factory_picks_latent2rgb_taesd_or_nothing(tmp_path, caplog):
    env = make_env(tmp_path)
    model = fake_model()
    cache = PreviewDecoders()
    z = torch.randn(1, 4, 6, 5)
    assert preview_factory(model, "none", env, cache) is None
    assert preview_factory(model, "auto", env, cache)(z).size == (5, 6)  # no decoder: latent2rgb
    with caplog.at_level(logging.WARNING, "latentgraph.nodes"):
        assert preview_factory(model, "taesd", env, cache)(z).size == (5, 6)
    assert "vae_approx/taesd_decoder.safetensors" in caplog.text
    random_decoder(env.models_dir / "vae_approx" / "taesd_decoder.safetensors", 16)
    assert preview_factory(model, "auto", env, cache)(z).size == (40, 48)
    assert preview_factory(model, "taesd", env, cache)(z).size == (40, 48)
    assert preview_factory(model, "latent2rgb", env, cache)(z).size == (5, 6)
    assert latent2rgb("sd15")(z).size == (5, 6)  # a family name: the linear projection
    # loaded once per file and device
    assert cache.decoder(find_decoder(env, model.arch, cache), "cpu") is cache.decoder(
        env.models_dir / "vae_approx" / "taesd_decoder.safetensors", "cpu")


def test_a_decoder_file_that_does_not_load_falls_back_once(tmp_path, caplog):
    env = make_env(tmp_path)
    bad = env.models_dir / "vae_approx" / "taesd_decoder.safetensors"
    bad.parent.mkdir(parents=True)
    save_file({"decoder.weight": torch.zeros(3)}, str(bad))
    preview = preview_factory(fake_model(), "auto", env, PreviewDecoders())
    z = torch.randn(1, 4, 6, 5)
    with caplog.at_level(logging.WARNING, "latentgraph.nodes"):
        assert [preview(z).size for _ in range(3)] == [(5, 6)] * 3  # latent2rgb, and the sampler goes on
    assert caplog.text.count("not a TAESD decoder") == 1 and "taesd_decoder.safetensors" in caplog.text


def test_families_get_their_own_decoder_names(tmp_path):
    env = make_env(tmp_path)
    cache = PreviewDecoders()
    random_decoder(env.models_dir / "vae_approx" / "taesd_decoder.safetensors", 16)
    xl = fake_model("sdxl")
    assert find_decoder(env, xl.arch, cache) is None  # SD1's decoder is not SDXL's
    assert find_decoder(env, fake_model("sd2").arch, cache).name == "taesd_decoder.safetensors"
    random_decoder(env.models_dir / "vae_approx" / "taesdxl_decoder.safetensors", 16)
    assert find_decoder(env, xl.arch, cache).name == "taesdxl_decoder.safetensors"
    # Playground v2.5's latents are brought to SDXL's scaled space before the decoder
    pg = fake_model("sdxl", PLAYGROUND_V25)
    z = torch.randn(1, 4, 4, 4)
    image = preview_factory(pg, "taesd", env, cache)(z)
    decoder = cache.decoder(find_decoder(env, xl.arch, cache), "cpu")
    with torch.no_grad():
        want = decoder(PLAYGROUND_V25.process_out(z) * 0.13025)[0]
    got = torch.from_numpy(np.array(image)).float().permute(2, 0, 1) / 255
    assert image.size == (32, 32) and float((got - want).abs().max()) <= 1 / 255 + 1e-6


def test_a_model_specific_decoder_is_used_only_for_its_model(tmp_path):
    env = make_env(tmp_path)
    cache = PreviewDecoders()
    sd15 = fake_model()
    mine = env.models_dir / "vae_approx" / "mine_taesd_decoder.safetensors"
    random_decoder(mine, 16, metadata={ARCH_KEY: architecture_id(sd15.arch)})
    assert find_decoder(env, sd15.arch, cache) == mine
    assert find_decoder(env, fake_model("sd2").arch, cache) is None  # another model: not its decoder
    # a family-named file made for another architecture is passed over too
    other = env.models_dir / "vae_approx" / "taesd_decoder.safetensors"
    random_decoder(other, 16, metadata={ARCH_KEY: "0" * 64})
    assert find_decoder(env, fake_model("sd2").arch, cache) is None
    # the shipped demo decoder is in the package's vae_approx, but no tiny SD1 model gets it
    assert DEMO_DECODER.is_file()
    mine.unlink()
    other.unlink()
    assert find_decoder(make_env(tmp_path / "empty"), sd15.arch, cache) is None


def test_the_runs_method_comes_from_extra_data(tmp_path):
    seen = []

    @node(outputs=[IMAGE], cacheable=False)
    def PreviewMethodProbe(ctx: NodeContext) -> torch.Tensor:
        """Records the run's preview method."""
        seen.append(run_method(ctx))
        return torch.zeros(1, 8, 8, 3)

    registry = create_registry()
    registry.register(PreviewMethodProbe)
    ex = Executor(registry, make_env(tmp_path))
    wf = Workflow()
    wf.add("p", "PreviewMethodProbe")
    for extra in ({}, {"preview_method": "none"}, {"preview_method": "taesd"}, {"preview_method": "default"}):
        ex.run(wf, targets=["p"], extra_data=extra)
    assert seen == ["auto", "none", "taesd", "auto"]
    assert [resolve_method(x, "latent2rgb") for x in (None, "default", "bogus", 3, "none", "auto")] == [
        "latent2rgb", "latent2rgb", "latent2rgb", "latent2rgb", "none", "auto"]


def test_the_server_default_and_the_prompts_override(tmp_path):
    env = make_env(tmp_path)
    registry = create_registry()
    app = create_app(registry, env, services={}, user_dir=tmp_path / "user", frontend="none",
                     preview_method="latent2rgb", preview_size=256)
    srv = app[SERVER]
    assert srv._preview_method({}) == "latent2rgb" and srv._preview_method({"preview_method": "default"}) == "latent2rgb"
    assert srv._preview_method({"preview_method": "taesd"}) == "taesd"
    assert srv._preview_method({"preview_method": "none"}) == "none"
    quiet = create_app(registry, env, services={}, user_dir=tmp_path / "user2", frontend="none", previews=False)
    srv = quiet[SERVER]
    assert srv._preview_method({"preview_method": "taesd"}) == "none"


def test_preview_size_shrinks_the_longest_side(tmp_path):
    assert fit_preview(Image.new("RGB", (1024, 768)), 512).size == (512, 384)
    assert fit_preview(Image.new("RGB", (300, 1200)), 512).size == (128, 512)
    small = Image.new("RGB", (64, 64))
    assert fit_preview(small, 512) is small  # never enlarged
    # a 1024x1024 picture's latent (128 x 128) through a TAESD decoder, then the server's size
    env = make_env(tmp_path)
    random_decoder(env.models_dir / "vae_approx" / "taesd_decoder.safetensors", 8)
    image = preview_factory(fake_model(), "taesd", env, PreviewDecoders())(torch.randn(1, 4, 128, 128))
    assert image.size == (1024, 1024) and fit_preview(image, 512).size == (512, 512)


def test_cli_serve_takes_the_preview_options():
    from latentgraph.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert (args.preview_method, args.preview_size) == ("auto", 512)
    args = build_parser().parse_args(["serve", "--preview-method", "taesd", "--preview-size", "256"])
    assert (args.preview_method, args.preview_size) == ("taesd", 256)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--preview-method", "fast"])


# -- the shipped demo decoder ------------------------------------------------------------------
def test_the_shipped_demo_decoder_is_small_and_tied_to_the_demo_checkpoint():
    from latentgraph.models.checkpoint import load_checkpoint
    from safetensors import safe_open

    assert DEMO_DECODER.stat().st_size < 1_000_000
    with safe_open(str(DEMO_DECODER), "pt") as f:
        meta = f.metadata()
    arch = load_checkpoint(SHIPPED_MODELS / "checkpoints" / DEMO, parts=()).arch
    assert meta[ARCH_KEY] == architecture_id(arch) and "latentgraph-shapes" in meta["latentgraph.preview_for"]
    assert find_decoder(make_env(Path("/nonexistent")), arch, PreviewDecoders()) == DEMO_DECODER


def demo_graph(prompt: str, seed: int) -> Workflow:
    wf = Workflow()
    ck = wf.add("ckpt", "CheckpointLoaderSimple", ckpt_name=DEMO)
    wf.add("pos", "CLIPTextEncode", clip=ck.CLIP, text=prompt)
    wf.add("neg", "CLIPTextEncode", clip=ck.CLIP, text="")
    wf.add("latent", "EmptyLatentImage", width=64, height=64, batch_size=1)
    wf.add("k", "KSampler", model=ck.MODEL, seed=seed, steps=20, cfg=5.0, sampler_name="euler", scheduler="normal",
           positive="pos", negative="neg", latent_image="latent", denoise=1.0)
    wf.add("decode", "VAEDecode", samples="k", vae=ck.VAE)
    return wf


def test_taesd_previews_of_the_demo_model_are_close_to_the_vae_decode(tmp_path):
    env = make_env(tmp_path)
    ex = Executor(create_registry(), env, services=create_services(env))
    scores = {"taesd": [], "latent2rgb": []}
    for seed, prompt in ((1, "a red circle on a blue background"), (2, "a yellow cross on a purple background"),
                         (3, "a white triangle on a black background")):
        previews = []
        result = ex.run(demo_graph(prompt, seed), targets=["k", "decode"], extra_data={"preview_method": "taesd"},
                        listener=lambda kind, data: previews.append(data["preview"]) if "preview" in data else None)
        assert len(previews) == 20
        vae = np.clip(255.0 * result.get("decode")[0].numpy(), 0, 255).astype(np.uint8)
        taesd = np.array(previews[-1]())  # the last step's denoised latent is the sampler's output
        linear = latent2rgb("sd15")(result.get("k")["samples"] * 0.18215)
        linear = np.array(linear.resize((64, 64), Image.Resampling.BILINEAR))
        assert taesd.shape == vae.shape == linear.shape == (64, 64, 3)
        scores["taesd"].append(psnr(taesd, vae))
        scores["latent2rgb"].append(psnr(linear, vae))
    taesd, linear = np.mean(scores["taesd"]), np.mean(scores["latent2rgb"])
    print(f"PSNR vs the VAE decode: TAESD {taesd:.2f} dB {scores['taesd']}, latent2rgb {linear:.2f} dB")
    assert taesd >= 20.0 and taesd > linear + 8.0


# -- through the server ------------------------------------------------------------------------
@asynccontextmanager
async def served(tmp: Path, services: dict, **options):
    env = make_env(tmp)
    app = create_app(create_registry(), env, services=services, user_dir=tmp / "user", frontend="none", **options)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def txt2img(seed: int, steps: int = 3) -> dict:
    """The repository's txt2img workflow (the demo checkpoint at 64 x 64) for a few steps."""
    prompt = json.loads((ROOT / "workflows" / "txt2img.api.json").read_text())
    prompt["sampler"]["inputs"].update(steps=steps, seed=seed)
    return prompt


async def frames_of(client, sid: str, prompt: dict, extra: dict) -> tuple[list[dict], list[bytes]]:
    ws = await client.ws_connect(f"/ws?clientId={sid}")
    await ws.receive_json(timeout=10)
    r = await client.post("/prompt", json={"prompt": prompt, "client_id": sid, "extra_data": extra})
    assert r.status == 200, await r.text()
    texts, frames = await until_done(ws, (await r.json())["prompt_id"])
    await ws.close()
    return texts, frames


def jpeg_sizes(frames: list[bytes]) -> list[tuple[int, int]]:
    sizes = []
    for frame in frames:
        kind, fmt = struct.unpack(">II", frame[:8])
        assert (kind, fmt) == (1, 1)  # a JPEG preview, in ComfyUI's frame
        sizes.append(Image.open(io.BytesIO(frame[8:])).size)
    return sizes


def test_the_server_sends_the_prompts_previews(tmp_path):
    services = create_services(Environment(device="cpu"))

    async def go():
        async with served(tmp_path / "a", services, preview_method="latent2rgb") as client:
            texts, frames = await frames_of(client, "a", txt2img(1), {"preview_method": "taesd"})
            assert jpeg_sizes(frames) == [(64, 64)] * 3  # the demo decoder: full size
            texts, frames = await frames_of(client, "a", txt2img(2), {})
            assert jpeg_sizes(frames) == [(8, 8)] * 3  # the server's default: latent2rgb
            texts, frames = await frames_of(client, "a", txt2img(3), {"preview_method": "none"})
            assert not frames and sum(m["type"] == "progress" for m in texts) == 3
        async with served(tmp_path / "b", services, preview_size=32) as client:
            _, frames = await frames_of(client, "b", txt2img(4), {})  # auto: the demo decoder, shrunk
            assert jpeg_sizes(frames) == [(32, 32)] * 3

    asyncio.run(asyncio.wait_for(go(), 300))

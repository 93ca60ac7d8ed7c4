"""SelfAttentionGuidance, PerturbedAttentionGuidance, PatchModelAddDownscale and HyperTile:
whole KSampler runs on the tiny SD1 checkpoint against ComfyUI 0.3.64's latents (the prompts in
tests/fixtures/comfy_reference/attention_patches/prompts, run through the real nodes here), and
unit checks of the pieces (blur map, identity attention, tiling, sigma ranges, errors)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor, Workflow
from latentgraph.models.unet import attention
from latentgraph.nodes import attention_patches as ap
from latentgraph.nodes import create_registry
from conftest import FIXTURES
from parity import tiny_env

REF_DIR = FIXTURES / "comfy_reference"
HERE = REF_DIR / "attention_patches"
REF = load_file(HERE / "attention_patches_ref.safetensors")
CASES = sorted(REF)


@pytest.fixture(scope="module")
def executor(tmp_path_factory):
    return Executor(create_registry(), tiny_env(tmp_path_factory.mktemp("attnpatch")))


def prompt(case: str) -> dict:
    """The API prompt ComfyUI ran, with our loader for its oracle-only one and no SaveLatent."""
    data = json.loads((HERE / "prompts" / f"{case}.json").read_text())
    data["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": data["1"]["inputs"]["ckpt_name"]}}
    del data["7"]
    return data


def run(executor, data: dict) -> torch.Tensor:
    return executor.run(Workflow.from_api(data), targets=["6"]).get("6")["samples"]


def tiny_model(executor):
    """The MODEL value of the tiny checkpoint, as the loader gives it."""
    return executor.run(Workflow.from_api(prompt("sag_64")), targets=["1"]).get("1")


def unpatched(data: dict) -> dict:
    data = json.loads(json.dumps(data))
    data["6"]["inputs"]["model"] = ["1", 0]
    del data["5"]
    return data


def test_every_case_has_a_prompt_and_a_reference():
    prompts = sorted(p.stem for p in (HERE / "prompts").glob("*.json"))
    assert prompts == CASES and len(CASES) == 9
    assert {prompt(c)["5"]["class_type"] for c in CASES} == {
        "SelfAttentionGuidance", "PerturbedAttentionGuidance", "PatchModelAddDownscale", "HyperTile"}


@pytest.mark.parametrize("case", CASES)
def test_matches_comfyui(executor, case):
    data = prompt(case)
    out, ref = run(executor, data), REF[case]
    assert out.shape == ref.shape
    scale = ref.abs().max()
    rel = float((out - ref).abs().max() / scale)
    assert rel < 1e-4, f"{case}: max diff {rel:.2e} of the latent's max abs value"
    # the patch matters: without it the latent is far from ComfyUI's patched one
    plain = run(executor, unpatched(data))
    assert float((plain - ref).abs().max() / scale) > 1e-3


# -- declarations -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["SelfAttentionGuidance", "PerturbedAttentionGuidance", "PatchModelAddDownscale",
                                  "HyperTile"])
def test_declaration_matches_comfyui_object_info(name):
    theirs = json.loads((HERE / "object_info.json").read_text())[name]
    ours = create_registry().object_info()[name]
    for key in ("input_order", "output", "output_name", "python_module", "category"):
        assert ours[key] == theirs[key], key
    assert (ours["display_name"] or name) == (theirs["display_name"] or name)
    assert ours.get("experimental", False) == theirs["experimental"]
    for input_name, (kind, opts) in theirs["input"]["required"].items():
        mine = ours["input"]["required"][input_name]
        if kind == "COMBO":  # ComfyUI's V3 form; ours is V1's (the list in the type's place)
            assert mine[0] == opts["options"]
        else:
            assert mine[0] == kind
            assert {k: v for k, v in (mine[1] if len(mine) > 1 else {}).items()} == opts, input_name


# -- SAG pieces -------------------------------------------------------------------------------
def test_attention_with_scores_is_the_unets_attention_plus_its_weights():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 16, 8, generator=g) for _ in range(3))
    out, weights = ap.attention_with_scores(q, k, v, heads=2)
    torch.testing.assert_close(out, attention(q, k, v, 2), rtol=0, atol=1e-6)
    assert weights.shape == (4, 16, 16)
    torch.testing.assert_close(weights.sum(-1), torch.ones(4, 16))
    # batch-major: entry 1 of the batch, head 0 is row 2
    qh, kh = q[1, :, :4], k[1, :, :4]
    torch.testing.assert_close(weights[2], (qh @ kh.T * 0.5).softmax(-1))


def test_gaussian_blur_values_and_edges():
    img = torch.zeros(1, 2, 17, 17)
    img[0, 0, 8, 8] = 1.0
    out = ap.gaussian_blur_2d(img, 9, 2.0)
    t = torch.arange(-4.0, 5.0)
    k1 = torch.exp(-0.5 * (t / 2.0) ** 2)
    k1 = k1 / k1.sum()
    torch.testing.assert_close(out[0, 0, 4:13, 4:13], torch.outer(k1, k1))  # a point spreads to the kernel
    assert float(out[0, 0].sum()) == pytest.approx(1.0, abs=1e-6)
    assert float(out[0, 1].abs().max()) == 0.0  # channels stay apart
    flat = torch.full((1, 3, 6, 7), 2.5)  # reflected edges keep a flat image flat
    torch.testing.assert_close(ap.gaussian_blur_2d(flat, 9, 3.0), flat)
    assert ap.gaussian_blur_2d(img, 9, 0.0) is img  # sigma 0: no blur (ComfyUI's formula gives NaN)


def test_blur_map_blurs_only_where_attention_gathers():
    x0 = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    scores = torch.zeros(2, 16, 16)  # 2 heads, a 4x4 middle grid
    scores[:, :, 5] = 1.0  # every query looks at token 5: row 1, column 1 of the grid
    out = ap.create_blur_map(x0, scores, 2.0, 1.0)
    blurred = ap.gaussian_blur_2d(x0, 9, 2.0)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:4, 2:4] = True  # the token's 2x2 latent pixels (nearest upsampling)
    assert torch.equal(out[..., ~inside], x0[..., ~inside])
    torch.testing.assert_close(out[..., inside], blurred[..., inside])
    assert not torch.allclose(out[..., inside], x0[..., inside])


def test_map_rows_follows_comfyui_and_falls_back_to_the_real_grid():
    assert ap._map_rows(24, 8, 12, None) == 4  # a 4x6 middle grid of an 8x12 latent
    assert ap._map_rows(35, 9, 13, None) == 5
    assert ap._map_rows(2, 1, 2, (1, 2)) == 1  # nothing to search: the UNet's grid
    with pytest.raises(ValueError, match="cannot lay out 2 attention tokens as a grid for a 1x2 latent"):
        ap._map_rows(2, 1, 2, None)


def _fake_model(record: list, value: float = 0.0):
    class M:
        def apply_model(self, x, sigma, c_crossattn, transformer_options=None, **_):
            record.append((x.clone(), transformer_options))
            return torch.full_like(x, value)
    return M()


def _cond():
    from latentgraph.sampling.guidance import Cond
    return [Cond(context=torch.zeros(1, 3, 8))]


def test_sag_records_the_negative_and_guides_with_one_extra_call():
    attn_and_record, post_cfg = ap._sag_patches(scale=0.5, blur_sigma=2.0)
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 16, 8, generator=g) for _ in range(3))
    extra = {"n_heads": 2, "cond_or_uncond": [1, 0], "activations_shape": [2, 8, 4, 4]}
    out = attn_and_record(q, k, v, extra)
    torch.testing.assert_close(out, attention(q, k, v, 2), rtol=0, atol=1e-6)
    x = torch.randn(1, 4, 8, 8, generator=g)
    uncond_pred, denoised = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    calls: list = []
    args = {"denoised": denoised, "uncond_denoised": uncond_pred, "input": x, "sigma": torch.tensor([3.0]),
            "model": _fake_model(calls, 0.25), "uncond": _cond(), "model_options": {}}
    result = post_cfg(args)
    _, weights = ap.attention_with_scores(q, k, v, 2)
    degraded = ap.create_blur_map(uncond_pred, weights[:2], 2.0, 1.0)  # the negative is chunk 0
    assert len(calls) == 1
    torch.testing.assert_close(calls[0][0], degraded + x - uncond_pred)
    torch.testing.assert_close(result, denoised + (degraded - 0.25) * 0.5)
    # the weights are used once: a step whose negative did not run is left alone
    assert post_cfg(args) is denoised and len(calls) == 1
    # a positive-only call does not record
    attn_and_record(q[:1], k[:1], v[:1], {**extra, "cond_or_uncond": [0]})
    assert post_cfg(args) is denoised
    small = {**args, "denoised": torch.zeros(1, 4, 4, 4)}  # too small for the blur: unchanged
    assert post_cfg(small) is small["denoised"]


def test_sag_node_patches_a_clone(executor):
    model = tiny_model(executor)
    before = repr(model.model_options)
    m = ap.SelfAttentionGuidance(model, 0.5, 2.0)
    assert repr(model.model_options) == before
    opts = m.model_options
    assert opts["disable_cfg1_optimization"] is True and len(opts["sampler_post_cfg_function"]) == 1
    assert list(opts["transformer_options"]["patches_replace"]["attn1"]) == [("middle", 0, 0)]


# -- PAG --------------------------------------------------------------------------------------
def test_pag_calls_the_positive_once_with_identity_attention_in_the_middle(executor):
    model = tiny_model(executor)
    m = ap.PerturbedAttentionGuidance(model, 2.0)
    (post_cfg,) = m.model_options["sampler_post_cfg_function"]
    calls: list = []
    opts = {"transformer_options": {"patches_replace": {"attn1": {("input", 1): ap.identity_attention}}}}
    snapshot = repr(opts)
    g = torch.Generator().manual_seed(3)
    denoised, cond_pred, x = (torch.randn(1, 4, 8, 8, generator=g) for _ in range(3))
    args = {"denoised": denoised, "cond_denoised": cond_pred, "input": x, "sigma": torch.tensor([2.0]),
            "model": _fake_model(calls, 0.5), "cond": _cond(), "model_options": opts}
    out = post_cfg(args)
    torch.testing.assert_close(out, denoised + (cond_pred - 0.5) * 2.0)
    assert len(calls) == 1 and torch.equal(calls[0][0], x)
    to = calls[0][1]
    assert to["cond_or_uncond"] == [0]
    assert set(to["patches_replace"]["attn1"]) == {("input", 1), ("middle", 0)}
    assert repr(opts) == snapshot  # the run's options are not changed
    v = torch.randn(2, 5, 8)
    assert ap.identity_attention(None, None, v, {}) is v
    zero = ap.PerturbedAttentionGuidance(model, 0.0).model_options["sampler_post_cfg_function"][0]
    assert zero(args) is denoised and len(calls) == 1


# -- Deep Shrink ------------------------------------------------------------------------------
def _shrink_patches(model, **kw):
    args = dict(block_number=3, downscale_factor=2.0, start_percent=0.0, end_percent=0.35,
                downscale_after_skip=True, downscale_method="bicubic", upscale_method="bicubic")
    args.update(kw)
    m = ap.PatchModelAddDownscale(model, **args)
    patches = m.model_options["transformer_options"]["patches"]
    name = "input_block_patch_after_skip" if args["downscale_after_skip"] else "input_block_patch"
    assert set(patches) == {name, "output_block_patch"}
    return patches[name][0], patches["output_block_patch"][0]


def test_deep_shrink_acts_on_its_block_within_its_sigma_range(executor):
    model = tiny_model(executor)
    sched = model.schedule
    down, up = _shrink_patches(model, end_percent=0.5, downscale_after_skip=False)
    h = torch.randn(1, 8, 8, 12)
    sigma_mid = sched.percent_to_sigma(0.5)
    inside = {"block": ("input", 3), "sigmas": torch.tensor([sigma_mid * 1.01])}
    assert down(h, inside).shape == (1, 8, 4, 6)
    assert down(h, {**inside, "sigmas": torch.tensor([sigma_mid * 0.99])}) is h  # past end_percent
    assert down(h, {**inside, "block": ("input", 2)}) is h
    assert down(h, {**inside, "sigmas": torch.tensor([float(sched.sigma_max)])}).shape == (1, 8, 4, 6)
    small, skip = torch.randn(1, 8, 4, 6), torch.randn(1, 8, 8, 12)
    grown, same_skip = up(small, skip, {})
    assert grown.shape == skip.shape and same_skip is skip
    torch.testing.assert_close(grown, torch.nn.functional.interpolate(small, size=(8, 12), mode="bicubic"))
    assert up(skip, skip, {})[0] is skip


def test_deep_shrink_refuses_sizes_it_cannot_make(executor):
    down, _ = _shrink_patches(tiny_model(executor), downscale_factor=9.0)
    opts = {"block": ("input", 3), "sigmas": torch.tensor([10.0])}
    with pytest.raises(ValueError, match=r"^PatchModelAddDownscale: downscale_factor 9.0 on input block 3's "
                                         r"4x4 features leaves 0x0; use a smaller factor or an earlier block$"):
        down(torch.zeros(1, 8, 4, 4), opts)
    grow, _ = _shrink_patches(tiny_model(executor), downscale_factor=0.1)
    big = torch.empty(1, 320, 1024, 1024, device="meta")  # 10x larger would be 125 GiB: refused before it is made
    with pytest.raises(ValueError) as err:
        grow(big, opts)
    assert str(err.value) == ("PatchModelAddDownscale: downscale_factor 0.1 on input block 3's 1024x1024 features "
                              "makes a feature map of 125 GiB, which exceeds the limit tensor_bytes = 8 GiB")


# -- HyperTile --------------------------------------------------------------------------------
def test_divisor_choices_as_comfyui_draws_them():
    assert ap._divisor_choices(16, 4, 3) == [4, 2]  # 16/4, 16/8; 16/16 would need randint to reach its high
    assert ap._divisor_choices(16, 4, 2) == [4]
    assert ap._divisor_choices(8, 4, 1) == [2]
    assert ap._divisor_choices(12, 4, 5) == [3, 2]  # 12/4, 12/6 (12/12 never drawn)
    assert ap._divisor_choices(7, 4, 5) == [1]  # prime: no tiling
    assert ap._divisor_choices(3, 8, 2) == [1]  # smaller than a tile


def _tiled(tile_size=32, swap_size=1, max_depth=0, scale_depth=False):
    return ap._hypertile_patches(tile_size, swap_size, max_depth, scale_depth)


def test_hypertile_attention_per_tile_as_comfyui_computes_it():
    tile_in, tile_out = _tiled()
    g = torch.Generator().manual_seed(4)
    n = torch.randn(2, 64, 8, generator=g)  # an 8x8 latent's top level: 2x2 tiles of 4x4
    extra = {"original_shape": [2, 4, 8, 8], "sigmas": torch.tensor([5.0])}
    q, k, v = tile_in(n, n, n, extra)
    assert q.shape == k.shape == v.shape == (8, 16, 8) and extra["hypertile_tiles"] == (2, 2, 8, 8)
    out = tile_out(attention(q, k, v, 2), extra)
    assert out.shape == (2, 64, 8) and "hypertile_tiles" not in extra
    grid = n.reshape(2, 8, 8, 8)
    for b in range(2):
        for i in range(2):
            for j in range(2):
                tile = grid[b, 4 * i:4 * i + 4, 4 * j:4 * j + 4].reshape(1, 16, 8)
                run = n[b:b + 1, 16 * (2 * i + j):16 * (2 * i + j + 1)]  # ComfyUI: the t-th run of keys
                want = attention(tile, run, run, 2).reshape(4, 4, 8)
                torch.testing.assert_close(out[b].reshape(8, 8, 8)[4 * i:4 * i + 4, 4 * j:4 * j + 4], want)
    # identity in between: the tokens come back in their order
    q, _, _ = tile_in(n, n, n, extra)
    assert torch.equal(tile_out(q, extra), n)


def test_hypertile_leaves_other_sizes_alone_and_picks_deterministically():
    tile_in, tile_out = _tiled(max_depth=0)
    n = torch.randn(1, 16, 8)  # a 4x4 level of an 8x8 latent: depth 1 > max_depth
    extra = {"original_shape": [1, 4, 8, 8]}
    out = tile_in(n, n, n, extra)
    assert out[0] is n and out[1] is n and "hypertile_tiles" not in extra
    assert tile_out(n, extra) is n
    seeds = {ap._tile_seed({"sigmas": torch.tensor([s]), "transformer_index": t}, 0)
             for s in (1.0, 2.0) for t in (0, 1)}
    assert len(seeds) == 4
    picks = [ap._pick([4, 2], seed) for seed in range(40)]
    assert set(picks) == {4, 2} and picks == [ap._pick([4, 2], seed) for seed in range(40)]


def test_hypertile_random_choices_give_the_same_latent_twice(executor):
    data = prompt("hypertile_depth1_128")
    data["5"]["inputs"]["swap_size"] = 3  # the top level may draw 4 or 2 tiles per side
    first = run(executor, data)
    data["6"]["inputs"]["cfg"] = 5.0 + 1e-9  # a new cache key: the sampler runs again
    assert torch.equal(run(executor, data), first)
    assert not torch.allclose(first, REF["hypertile_depth1_128"], rtol=1e-4, atol=1e-3)

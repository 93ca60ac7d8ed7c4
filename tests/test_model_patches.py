"""The patch layer: model_options in ComfyUI's shape, cloned without copying tensors, called by
the UNet and CFG at ComfyUI's points with ComfyUI's arguments (on tiny real models)."""

from __future__ import annotations

import pytest
import torch

from latentgraph.models.families import tiny_architecture
from latentgraph.models.management import Placement
from latentgraph.models.unet import UNetModel, attention
from latentgraph.nodes.sd import SDModel, schedule_for
from latentgraph.sampling.guidance import CFGDenoiser, Cond
from latentgraph.sampling.ksampler import sample

# the tiny SD1.5 layout: transformers after input blocks 1 and 3, in the middle and after
# every output block; level 0 is 32 wide (8 heads of 4), level 1 64 wide (8 heads of 8)
TRANSFORMER_BLOCKS = [("input", 1), ("input", 3), ("middle", 0), ("output", 0), ("output", 1), ("output", 2),
                      ("output", 3)]
WIDTH = {("input", 1): 32, ("input", 3): 64, ("middle", 0): 64, ("output", 0): 64, ("output", 1): 64,
         ("output", 2): 32, ("output", 3): 32}
SIDE = {32: 16, 64: 8}  # feature map side for a 16x16 latent at each width


def make_model(family: str = "sd15") -> SDModel:
    arch = tiny_architecture(family)
    torch.manual_seed(0)
    unet = UNetModel(arch.unet).eval()
    return SDModel(unet, arch, schedule_for(arch), Placement())


@pytest.fixture(scope="module")
def model() -> SDModel:
    return make_model()


def unet_inputs(family: str = "sd15", batch: int = 2):
    g = torch.Generator().manual_seed(1)
    arch = tiny_architecture(family)
    x = torch.randn(batch, 4, 16, 16, generator=g)
    ctx = torch.randn(batch, 77, arch.unet.context_dim, generator=g)
    y = torch.randn(batch, arch.unet.adm_in_channels, generator=g) if arch.unet.adm_in_channels else None
    return x, torch.tensor([999.0, 10.0][:batch]), ctx, y


def prompts(seed: int = 2) -> tuple[list[Cond], list[Cond]]:
    g = torch.Generator().manual_seed(seed)
    return [Cond(torch.randn(1, 77, 32, generator=g))], [Cond(torch.randn(1, 77, 32, generator=g))]


def denoise(model: SDModel, cfg: float = 7.0, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x, sigma, guided denoised) for one step on a 16x16 latent through the model's options."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 16, 16, generator=g) * 5.0
    sigma = torch.tensor([5.0])
    pos, neg = prompts()
    with torch.no_grad():
        out = CFGDenoiser(model.apply_model, pos, neg, cfg, model.model_options, model)(x, sigma)
    return x, sigma, out


def identity_attn(n, context, value, extra):
    return n, context, value


# -- clones -----------------------------------------------------------------------------------
def test_a_patched_clone_leaves_the_original_as_it_was(model):
    _, _, before = denoise(model)
    tensor = torch.ones(3)
    model.model_options["transformer_options"]["holder"] = {"t": tensor}
    try:
        clone = model.clone()
        clone.set_model_attn1_output_patch(lambda n, extra: n * 0)
        clone.set_model_sampler_post_cfg_function(lambda args: args["denoised"] * 2)
        assert model.model_options == {"transformer_options": {"holder": {"t": tensor}}}
        assert set(clone.model_options) == {"transformer_options", "sampler_post_cfg_function"}
        assert len(clone.model_options["transformer_options"]["patches"]["attn1_output_patch"]) == 1
        # dicts copied, tensors and the network shared
        assert clone.model_options["transformer_options"]["holder"] is not model.model_options[
            "transformer_options"]["holder"]
        assert clone.model_options["transformer_options"]["holder"]["t"].data_ptr() == tensor.data_ptr()
        assert clone.unet is model.unet
        for (name, a), (_, b) in zip(model.unet.named_parameters(), clone.unet.named_parameters()):
            assert a.data_ptr() == b.data_ptr(), name
        _, _, after = denoise(model)
        _, _, patched = denoise(clone)
    finally:
        del model.model_options["transformer_options"]["holder"]
    assert torch.equal(before, after)
    assert not torch.allclose(patched, before, atol=1e-3)


def test_patching_a_clone_twice_does_not_share_patch_lists(model):
    a = model.clone()
    a.set_model_attn2_patch(identity_attn)
    b = a.clone()
    b.set_model_attn2_patch(identity_attn)
    b.set_model_attn1_replace(lambda q, k, v, extra: q, "input", 1)
    assert len(a.model_options["transformer_options"]["patches"]["attn2_patch"]) == 1
    assert len(b.model_options["transformer_options"]["patches"]["attn2_patch"]) == 2
    assert "patches_replace" not in a.model_options["transformer_options"]
    assert list(b.model_options["transformer_options"]["patches_replace"]["attn1"]) == [("input", 1)]


def test_model_sampling_change_is_a_clone(model):
    patched = model.clone()
    patched.set_model_attn1_patch(identity_attn)
    other = patched.with_schedule(schedule_for(model.arch, "v", False))
    other.set_model_attn1_patch(identity_attn)
    assert len(patched.model_options["transformer_options"]["patches"]["attn1_patch"]) == 1
    assert other.schedule.prediction == "v" and patched.schedule.prediction != "v"


def test_bad_patches_are_refused_with_the_name(model):
    m = model.clone()
    with pytest.raises(TypeError, match=r"set_model_patch\('attn1_patch'\): the patch must be callable, got int"):
        m.set_model_attn1_patch(3)
    with pytest.raises(ValueError, match="block_name must be one of input, middle, output, not 'down'"):
        m.set_model_attn2_replace(identity_attn, "down", 1)
    assert m.model_options == {"transformer_options": {}}


# -- the UNet's call points -------------------------------------------------------------------
def run_unet(unet: UNetModel, patches: dict | None = None, replace: dict | None = None, family: str = "sd15",
             control: dict | None = None) -> torch.Tensor:
    x, t, ctx, y = unet_inputs(family)
    to = {"cond_or_uncond": [1, 0], "sigmas": torch.tensor([3.0])}
    if patches:
        to["patches"] = patches
    if replace:
        to["patches_replace"] = replace
    with torch.no_grad():
        return unet(x, t, ctx, y, control, to)


def test_transformer_patches_get_comfyuis_arguments(model):
    calls = []

    def recorder(name):
        def attn(n, context, value, extra):
            calls.append((name, extra["block"], tuple(n.shape), tuple(context.shape), value is context, dict(extra)))
            return n, context, value
        return attn

    def out_recorder(name):
        def patch(n, extra):
            calls.append((name, extra["block"], tuple(n.shape)))
            return n
        return patch

    patches = {"attn1_patch": [recorder("attn1")], "attn2_patch": [recorder("attn2")],
               "attn1_output_patch": [out_recorder("attn1_out")], "middle_patch": [out_recorder("middle")],
               "attn2_output_patch": [out_recorder("attn2_out")]}
    plain = run_unet(model.unet)
    patched = run_unet(model.unet, patches)
    assert torch.equal(plain, patched)  # identity patches leave the result bit for bit
    assert len(calls) == 5 * len(TRANSFORMER_BLOCKS)
    order = ["attn1", "attn1_out", "middle", "attn2", "attn2_out"]
    for i, block in enumerate(TRANSFORMER_BLOCKS):
        width, side = WIDTH[block], SIDE[WIDTH[block]]
        tokens = (2, side * side, width)
        these = calls[5 * i: 5 * i + 5]
        assert [c[0] for c in these] == order and all(c[1] == block for c in these)
        attn1, attn2 = these[0], these[3]
        assert attn1[2:5] == (tokens, tokens, True)  # self-attention: context and value are the input
        assert attn2[2:5] == (tokens, (2, 77, 32), True)
        assert these[1][2] == these[2][2] == these[4][2] == tokens
        extra = attn1[5]
        assert set(extra) == {"cond_or_uncond", "sigmas", "original_shape", "transformer_index", "block",
                              "block_index", "activations_shape", "n_heads", "dim_head", "attn_precision"}
        assert extra["n_heads"] == 8 and extra["dim_head"] == width // 8
        assert extra["block_index"] == 0 and extra["transformer_index"] == i
        assert extra["original_shape"] == [2, 4, 16, 16]
        assert extra["activations_shape"] == [2, width, side, side]
        assert extra["cond_or_uncond"] == [1, 0] and extra["sigmas"].tolist() == [3.0]
        assert extra["attn_precision"] is None


def test_block_patches_get_the_block_ids_and_hidden_states(model):
    calls = []

    def input_patch(h, to):
        calls.append(("in", to["block"], tuple(h.shape)))
        return h

    def after_skip(h, to):
        calls.append(("skip", to["block"], tuple(h.shape)))
        return h

    def output_patch(h, hsp, to):
        calls.append(("out", to["block"], tuple(h.shape), tuple(hsp.shape)))
        return h, hsp

    plain = run_unet(model.unet)
    patched = run_unet(model.unet, {"input_block_patch": [input_patch], "input_block_patch_after_skip": [after_skip],
                                    "output_block_patch": [output_patch]})
    assert torch.equal(plain, patched)
    inputs = [(2, 32, 16, 16), (2, 32, 16, 16), (2, 32, 8, 8), (2, 64, 8, 8)]
    expected = []
    for i, shape in enumerate(inputs):
        expected += [("in", ("input", i), shape), ("skip", ("input", i), shape)]
    outputs = [((2, 64, 8, 8), (2, 64, 8, 8)), ((2, 64, 8, 8), (2, 32, 8, 8)), ((2, 64, 16, 16), (2, 32, 16, 16)),
               ((2, 32, 16, 16), (2, 32, 16, 16))]
    expected += [("out", ("output", i), h, s) for i, (h, s) in enumerate(outputs)]
    assert calls == expected


def test_block_patches_change_the_result(model):
    plain = run_unet(model.unet)
    doubled = run_unet(model.unet, {"output_block_patch": [lambda h, hsp, to: (h, hsp * 0)]})
    assert not torch.allclose(plain, doubled, atol=1e-3)
    calls = []
    run_unet(model.unet, {"emb_patch": [lambda emb, channels, to: calls.append((tuple(emb.shape), channels)) or emb]})
    assert calls == [((2, 128), 32)]


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_attention_replacement_with_the_default_attention_is_bit_exact(family):
    unet = make_model(family).unet
    seen = []

    def default(q, k, v, extra):
        seen.append((extra["block"], extra["block_index"], tuple(q.shape), tuple(k.shape)))
        return attention(q, k, v, extra["n_heads"])

    blocks = {b: default for b in TRANSFORMER_BLOCKS}
    plain = run_unet(unet, family=family)
    replaced = run_unet(unet, replace={"attn1": blocks, "attn2": blocks}, family=family)
    assert torch.equal(plain, replaced)
    assert len(seen) == 2 * len(TRANSFORMER_BLOCKS)
    ctx_dim = tiny_architecture(family).unet.context_dim
    block, _, q, k = seen[1]  # the attn2 of input block 1: text keys, projected to the block's width
    assert block == ("input", 1) and q == (2, 256, 32) and k == (2, 77, 32) and ctx_dim == 32


def test_replacement_keys_with_a_transformer_index_come_first(model):
    zero = {("input", 1): lambda q, k, v, extra: q * 0}
    plain = run_unet(model.unet)
    zeroed = run_unet(model.unet, replace={"attn2": zero})
    assert not torch.allclose(plain, zeroed, atol=1e-3)
    both = dict(zero)
    both[("input", 1, 0)] = lambda q, k, v, extra: attention(q, k, v, extra["n_heads"])
    assert torch.equal(run_unet(model.unet, replace={"attn2": both}), plain)


def test_zeroing_attn1_output_is_removing_attn1(model):
    patched = run_unet(model.unet, {"attn1_output_patch": [lambda n, extra: n * 0]})
    torch.manual_seed(0)
    ablated = UNetModel(model.arch.unet).eval()
    ablated.load_state_dict(model.unet.state_dict())
    with torch.no_grad():
        for m in ablated.modules():
            if hasattr(m, "attn1"):
                m.attn1.to_out[0].weight.zero_()
                m.attn1.to_out[0].bias.zero_()
    assert torch.equal(patched, run_unet(ablated))
    assert not torch.allclose(patched, run_unet(model.unet), atol=1e-3)


def test_control_residuals_are_added_per_block(model):
    plain = run_unet(model.unet)
    zeros = {"input": [], "middle": [torch.zeros(2, 64, 8, 8)], "output": [None] * 4}
    assert torch.equal(run_unet(model.unet, control=zeros), plain)
    assert len(zeros["middle"]) == 1  # the caller's lists are not consumed
    pushed = run_unet(model.unet, control={"middle": [torch.full((2, 64, 8, 8), 0.5)]})
    assert not torch.allclose(pushed, plain, atol=1e-3)
    # the last residual of "output" goes to output block 0's skip (ComfyUI pops from the end)
    residual = torch.full((2, 64, 8, 8), 0.5)
    a = run_unet(model.unet, control={"output": [None, None, None, residual]})
    b = run_unet(model.unet, patches={"output_block_patch": [
        lambda h, hsp, to: (h, hsp + 0.5 if to["block"] == ("output", 0) else hsp)]})
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"control residual for the middle block 0 has shape \(2, 32, 8, 8\), "
                                         r"the block's output has \(2, 64, 8, 8\)"):
        run_unet(model.unet, control={"middle": [torch.zeros(2, 32, 8, 8)]})


# -- CFG ----------------------------------------------------------------------------------------
CFG_KEYS = {"cond", "uncond", "cond_scale", "timestep", "input", "sigma", "cond_denoised", "uncond_denoised",
            "model", "model_options", "input_cond", "input_uncond"}
POST_KEYS = {"denoised", "cond", "uncond", "cond_scale", "model", "uncond_denoised", "cond_denoised", "sigma",
             "model_options", "input"}


def predictions(model: SDModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) denoised by the tiny model at denoise()'s x and sigma, from a pre-cfg hook."""
    got = {}
    m = model.clone()
    m.set_model_sampler_pre_cfg_function(lambda args: got.setdefault("out", args["conds_out"]))
    denoise(m)
    return got["out"][0], got["out"][1]


def test_sampler_cfg_function_gets_noise_space_arguments_and_can_reproduce_cfg(model):
    x, sigma, standard = denoise(model)
    cond, uncond = predictions(model)
    assert torch.equal(standard, uncond + (cond - uncond) * 7.0)
    seen = {}

    def cfg(args):
        seen.update(args)
        return args["uncond"] + (args["cond"] - args["uncond"]) * args["cond_scale"]

    m = model.clone()
    m.set_model_sampler_cfg_function(cfg)
    _, _, out = denoise(m)
    assert set(seen) == CFG_KEYS
    assert torch.equal(seen["cond"], x - cond) and torch.equal(seen["uncond"], x - uncond)
    assert torch.equal(seen["cond_denoised"], cond) and torch.equal(seen["uncond_denoised"], uncond)
    assert seen["cond_scale"] == 7.0 and seen["sigma"] is seen["timestep"] and seen["sigma"].tolist() == [5.0]
    assert torch.equal(seen["input"], x) and seen["model"] is m and seen["model_options"] is m.model_options
    assert len(seen["input_cond"]) == 1 and len(seen["input_uncond"]) == 1
    torch.testing.assert_close(out, standard, rtol=0, atol=1e-5)
    # the first form, f(cond, uncond, cond_scale), is wrapped as ComfyUI wraps it
    old = model.clone()
    old.set_model_sampler_cfg_function(lambda c, u, scale: u + (c - u) * scale)
    assert torch.equal(denoise(old)[2], out)


def test_post_cfg_functions_run_in_order_on_the_denoised_result(model):
    _, sigma, standard = denoise(model)
    seen = []
    m = model.clone()
    m.set_model_sampler_post_cfg_function(lambda args: seen.append(set(args)) or args["denoised"] * 2)
    m.set_model_sampler_post_cfg_function(lambda args: args["denoised"] + 1)
    _, _, out = denoise(m)
    assert seen == [POST_KEYS]
    assert torch.equal(out, standard * 2 + 1)


def test_pre_cfg_function_changes_the_predictions(model):
    _, _, standard = denoise(model)
    cond, uncond = predictions(model)
    seen = {}
    m = model.clone()

    def swap(args):
        seen.update(args)
        return [args["conds_out"][1], args["conds_out"][0]]

    m.set_model_sampler_pre_cfg_function(swap)
    _, _, out = denoise(m)
    assert set(seen) == {"conds", "conds_out", "cond_scale", "timestep", "input", "sigma", "model", "model_options"}
    assert torch.equal(out, cond + (uncond - cond) * 7.0)
    assert not torch.allclose(out, standard, atol=1e-3)


def count_calls(model: SDModel) -> tuple[list, SDModel]:
    calls = []
    m = model.clone()

    def wrapper(apply_model, args):
        calls.append((sorted(args), sorted(args["c"]), list(args["cond_or_uncond"]), args["input"].shape[0]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    m.set_model_unet_function_wrapper(wrapper)
    return calls, m


def test_cfg1_skips_the_negative_unless_disabled(model):
    calls, m = count_calls(model)
    _, _, out = denoise(m, cfg=1.0)
    assert [c[2:] for c in calls] == [([0], 1)]
    assert torch.equal(out, denoise(model, cfg=1.0)[2])
    calls.clear()
    m.set_model_sampler_cfg_function(lambda args: args["cond"], disable_cfg1_optimization=True)
    assert m.model_options["disable_cfg1_optimization"] is True
    denoise(m, cfg=1.0)
    assert [c[2:] for c in calls] == [([1, 0], 2)]  # the negative leads the batch, as in ComfyUI


def test_model_function_wrapper_runs_once_per_model_call_with_comfyuis_args(model):
    calls, m = count_calls(model)
    _, _, out = denoise(m)
    assert torch.equal(out, denoise(model)[2])
    assert calls == [(["c", "cond_or_uncond", "input", "timestep"], ["c_crossattn", "transformer_options"], [1, 0], 2)]
    # a whole KSampler run: one call per euler step
    calls.clear()
    pos, neg = prompts()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    sigmas = torch.tensor([10.0, 5.0, 2.0, 0.0])
    with torch.no_grad():
        a = sample(m.apply_model, m.schedule, "euler", sigmas, noise, torch.zeros(1, 4, 16, 16), pos, neg, 7.0, 0,
                   1.0, model_options=m.model_options, model=m)
        b = sample(model.apply_model, model.schedule, "euler", sigmas, noise, torch.zeros(1, 4, 16, 16), pos, neg,
                   7.0, 0, 1.0, model_options=model.model_options, model=model)
    assert len(calls) == 3 and torch.equal(a, b)
    assert "sample_sigmas" not in m.model_options["transformer_options"]  # set per run, on a copy


def test_wrapper_sees_the_run_schedule_and_can_scale_the_output(model):
    seen = []
    m = model.clone()

    def wrapper(apply_model, args):
        seen.append(args["c"]["transformer_options"]["sample_sigmas"].tolist())
        return apply_model(args["input"], args["timestep"], **args["c"]) * 0

    m.set_model_unet_function_wrapper(wrapper)
    pos, neg = prompts()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = sample(m.apply_model, m.schedule, "euler", torch.tensor([10.0, 5.0, 0.0]), noise,
                     torch.zeros(1, 4, 16, 16), pos, neg, 7.0, 0, 1.0, model_options=m.model_options, model=m)
    assert seen == [[10.0, 5.0, 0.0]] * 2
    # denoised is 0 at every step: euler walks x straight to 0
    assert torch.equal(out, torch.zeros(1, 4, 16, 16))


def test_denoise_mask_function_gets_sigma_and_the_mask(model):
    seen = []
    m = model.clone()

    def mask_fn(sigma, mask, extra_options):
        seen.append((sigma.tolist(), tuple(mask.shape), sorted(extra_options)))
        return torch.ones_like(mask)  # regenerate everything: the same as no mask

    m.set_model_denoise_mask_function(mask_fn)
    pos, neg = prompts()
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(4))
    mask = torch.zeros(1, 16, 16)
    sigmas = torch.tensor([10.0, 5.0, 0.0])
    args = (m.schedule, "euler", sigmas, noise, torch.zeros(1, 4, 16, 16), pos, neg, 7.0, 0, 1.0)
    with torch.no_grad():
        masked = sample(m.apply_model, *args, denoise_mask=mask, model_options=m.model_options, model=m)
        free = sample(model.apply_model, *args, model_options=model.model_options, model=model)
        kept = sample(model.apply_model, *args, denoise_mask=mask, model_options=model.model_options, model=model)
    assert seen == [([10.0], (1, 4, 16, 16), ["model", "sigmas"]), ([5.0], (1, 4, 16, 16), ["model", "sigmas"])]
    torch.testing.assert_close(masked, free, rtol=0, atol=1e-6)
    assert torch.equal(kept, torch.zeros(1, 4, 16, 16))  # an all-zero mask keeps the (empty) latent

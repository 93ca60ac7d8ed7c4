"""EasyCache, LazyCache and TomePatchModel (issue 17): ComfyUI's declarations, its results on the
tiny SD1 model (tests/fixtures/comfy_reference/speed_patches), the skip counts it logs, and the
mechanisms on their own terms (the patch layer's wrappers, token merging's merge/unmerge)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from latentgraph.graph import Executor
from latentgraph.models.patcher import ModelPatcher, call_wrapped, copy_options
from latentgraph.models.speed_tome import TomePatch, bipartite_merge, tome_functions
from latentgraph.nodes import create_registry
from latentgraph.sampling.step_cache import EasyCacheState, LazyCacheState

from parity import REF, as_latentgraph, saved_latents, tiny_env

HERE = REF / "speed_patches"
REFS = load_file(str(HERE / "latents.safetensors"))
SKIPPED = json.loads((HERE / "skipped.json").read_text())


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_env(tmp_path_factory.mktemp("speed"))


def run_case(env, name: str, caplog) -> tuple[torch.Tensor, list[str]]:
    """The oracle's prompt ``name`` run here: the saved latent and the step caches' summary lines."""
    prompt = json.loads((HERE / "prompts" / f"{name}.json").read_text())
    ours = as_latentgraph(prompt)
    executor = Executor(create_registry(), env)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="latentgraph.sampling.step_cache"):
        run = executor.run(ours)
    messages = [r.getMessage() for r in caplog.records if r.name == "latentgraph.sampling.step_cache"]
    return saved_latents(env, run, ours)[name], messages


def assert_parity(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs().max().item()
    assert err <= 1e-4 * ref.abs().max().item(), f"max abs difference {err}"


def test_declarations_are_comfyuis():
    registry = create_registry()
    ref = json.loads((HERE / "object_info.json").read_text())
    keys = ("input", "input_order", "output", "output_name", "category", "python_module", "description")
    for name in ("EasyCache", "LazyCache"):
        info = registry.get(name).object_info()
        assert {k: info[k] for k in keys} == {k: ref[name][k] for k in keys}
        assert info["output_tooltips"] == ref[name]["output_tooltips"] and info["experimental"] is True
    tome = registry.get("TomePatchModel").object_info()
    assert tome["input"]["required"]["ratio"] == ref["TomePatchModel"]["input"]["required"]["ratio"]
    assert tome["input"]["required"]["model"][0] == "MODEL"
    assert (tome["category"], tome["output"], tome["python_module"]) == (
        "model_patches/unet", ["MODEL"], "comfy_extras.nodes_tomesd")


@pytest.mark.parametrize("name", ["easycache_64", "easycache_cfg1_64", "lazycache_64", "lazycache_t05_64"])
def test_step_caches_match_comfyui_and_skip_as_many_calls(env, caplog, name):
    out, messages = run_case(env, name, caplog)
    assert_parity(out, REFS[name])
    cache = "EasyCache" if name.startswith("easy") else "LazyCache"
    n = SKIPPED[name]
    assert [m for m in messages if " - skipped " in m] == [f"{cache} - skipped {n}/12 steps ({12 / (12 - n):.2f}x speedup)."]
    # verbose: one line per decision to skip, as in ComfyUI's log
    assert sum(m.startswith(f"{cache} [verbose] - skipping step; cumulative_change_rate: ") for m in messages) == n
    assert messages[0].startswith(f"{cache} enabled - threshold: 0.")
    # and it really is an approximation: the run without the node differs
    assert (REFS[name] - REFS["plain_64"]).abs().max() > 1e-3


def test_plain_run_matches_so_the_comparison_means_something(env, caplog):
    out, messages = run_case(env, "plain_64", caplog)
    assert_parity(out, REFS["plain_64"])
    assert messages == []


def test_tome_matches_comfyui_with_its_seeded_destinations(env, caplog):
    out, _ = run_case(env, "tome_128", caplog)
    assert_parity(out, REFS["tome_128"])
    assert (REFS["tome_128"] - REFS["plain_128"]).abs().max() > 1e-3


class _Model(ModelPatcher):
    """The patch layer alone (SDModel's clone without a UNet)."""

    def __init__(self):
        self.model_options = {"transformer_options": {}}

    def clone(self):
        m = _Model()
        m.model_options = copy_options(self.model_options)
        return m


def test_the_input_model_is_left_unpatched():
    from latentgraph.nodes.speed_patches import EasyCache, LazyCache, TomePatchModel

    base = _Model()
    made = [EasyCache(base, 0.2, 0.15, 0.95, False), LazyCache(base, 0.2, 0.15, 0.95, False),
            TomePatchModel(base, 0.3)]
    assert base.model_options == {"transformer_options": {}}
    wrappers = [sorted((t, sorted(k)) for t, k in m.model_options["transformer_options"]["wrappers"].items())
                for m in made]
    assert wrappers == [[("diffusion_model", ["easycache"]), ("outer_sample", ["easycache"]),
                         ("predict_noise", ["easycache"])],
                        [("outer_sample", ["lazycache"]), ("predict_noise", ["lazycache"])],
                        [("outer_sample", ["tome"])]]
    assert len(made[2].model_options["transformer_options"]["patches"]["attn1_patch"]) == 1


def test_wrappers_nest_first_added_outermost():
    calls = []

    def outer(executor, a):
        calls.append("outer")
        return executor(a + 1) * 10

    def inner(executor, a):
        calls.append("inner")
        return executor(a * 2)

    to = {"wrappers": {"predict_noise": {"x": [outer], "y": [inner]}}}
    assert call_wrapped(to, "predict_noise", lambda a: a + 100, 1) == ((1 + 1) * 2 + 100) * 10
    assert calls == ["outer", "inner"]
    assert call_wrapped({}, "predict_noise", lambda a: a - 1, 5) == 4


def test_unknown_wrapper_type_is_refused_with_the_choices():
    with pytest.raises(ValueError, match=r"wrapper type 'calc_cond_batch': expected one of outer_sample, "
                                         r"predict_noise, diffusion_model"):
        _Model().add_wrapper_with_key("calc_cond_batch", "k", lambda *a: None)


def test_lazycache_skips_and_reuses_the_last_difference():
    """An executor whose output is x + 1: after two real calls, k = 1 and each later small input
    change is estimated as tiny, so calls are skipped and answered with x + (last output - input)."""
    from latentgraph.sampling.step_cache import lazycache_predict_wrapper

    cache = LazyCacheState(0.5, 0.0, 1.0)
    cache.start_t, cache.end_t = 1e9, 0.0
    opts = {"transformer_options": {"easycache": cache}}
    real = []

    def executor(x, sigma, model_options, seed):
        real.append(float(sigma[0]))
        return x + 1.0

    x = torch.zeros(1, 4, 16, 16)
    outs = [lazycache_predict_wrapper(executor, x + 0.01 * i, torch.tensor([10.0 - i]), opts, 0) for i in range(6)]
    assert real == [10.0, 9.0]  # k measured from the first two calls; the other four reuse it
    assert cache.skipped == 4
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, x + 0.01 * i + 1.0)


def test_easycache_adds_every_entrys_difference_as_comfyui_does():
    cache = EasyCacheState(0.2, 0.0, 1.0)
    cache.first_uuid = "u"
    x = torch.zeros(2, 4, 8, 8)
    cache.store(torch.cat([torch.full((1, 4, 8, 8), 1.0), torch.full((1, 4, 8, 8), 2.0)]), x, ["u", "c"])
    torch.testing.assert_close(cache.apply(x, ["u", "c"]), torch.full((2, 4, 8, 8), 3.0))
    assert cache.skipped == 1
    cache.store(torch.ones(4, 4, 8, 8), torch.zeros(4, 4, 8, 8), ["u", "c"])
    with pytest.raises(ValueError, match=r"EasyCache: the cached difference \(2, 4, 8, 8\) does not fit the UNet "
                                         r"input \(4, 4, 8, 8\)"):
        cache.apply(torch.zeros(4, 4, 8, 8), ["u", "c"])


def test_tome_merges_r_tokens_and_unmerge_restores_unmerged_ones():
    g = torch.Generator().manual_seed(0)
    metric = torch.randn(2, 64, 16)
    merge, unmerge = bipartite_merge(metric, 8, 8, 20, g)
    merged = merge(metric)
    assert merged.shape == (2, 44, 16)
    back = unmerge(merged)
    assert back.shape == metric.shape
    # 44 rows per item come back exactly (the kept sources and the destinations that got nothing);
    # the 20 merged sources carry their destination's mean
    exact = (back == metric).all(dim=-1).sum(dim=1)
    assert (exact >= 44 - 16).all() and (exact < 64).all()
    # the same seed chooses the same destinations
    merge2, _ = bipartite_merge(metric, 8, 8, 20, torch.Generator().manual_seed(0))
    assert torch.equal(merge2(metric), merged)


def test_tome_acts_only_at_full_resolution_and_not_at_ratio_0():
    q = torch.randn(1, 64, 8)
    assert tome_functions(q, 0.5, [1, 4, 8, 8], None)[0](q).shape == (1, 32, 8)
    assert tome_functions(q, 0.5, [1, 4, 16, 16], None)[0](q) is q  # a 2x downsampled level
    assert tome_functions(q, 0.0, [1, 4, 8, 8], None)[0](q) is q
    patch = TomePatch(0.5)
    mq, k, v = patch.attn1_patch(q, q, q, {"original_shape": [1, 4, 8, 8]})
    assert mq.shape == (1, 32, 8) and k is q and v is q
    assert patch.attn1_output_patch(mq, {}).shape == (1, 64, 8)


def test_tome_generator_continues_comfyuis_global_stream():
    """ComfyUI: torch.manual_seed(seed), the noise drawn, then ToMe's randint from the global
    generator. The outer_sample wrapper's generator gives the same draws (with the global one
    left alone)."""
    from latentgraph.models.speed_tome import tome_run_wrapper

    with torch.random.fork_rng():
        torch.manual_seed(42)
        torch.randn((1, 4, 16, 16))
        expected = torch.randint(4, size=(8, 8, 1))
        state = torch.random.get_rng_state()
        seen = {}

        def executor(options, info):
            seen["draw"] = torch.randint(4, size=(8, 8, 1), generator=options["transformer_options"]["tome_generator"])
            return "samples"

        info = {"seed": 42, "noise_shape": (1, 4, 16, 16)}
        assert tome_run_wrapper(executor, {"transformer_options": {}}, info) == "samples"
        assert torch.equal(seen["draw"], expected)
        assert torch.equal(torch.random.get_rng_state(), state)

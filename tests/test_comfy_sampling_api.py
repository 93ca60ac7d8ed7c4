"""ComfyUI's sampling API for packs (comfy.samplers, comfy.sample, comfy.k_diffusion.sampling,
nodes.common_ksampler), used as real packs use it: a pack folder whose nodes take
KSampler.SAMPLERS/SCHEDULERS combos, sample with comfy.sample and common_ksampler, build a
KSAMPLER over their own k-diffusion style function and subclass CFGGuider. Each result is
compared by value with latentgraph's own nodes run with the same settings on the shipped demo
model (64x64, 3 steps). The pack is tests/fixtures/packs/sampling_api_pack."""

from __future__ import annotations

import math
import shutil
import textwrap
from pathlib import Path
from types import SimpleNamespace
from uuid import UUID

import pytest
import torch

from latentgraph import comfy_compat
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.nodes import create_registry, create_services
from latentgraph.nodes.choices import SAMPLER_NAMES, SCHEDULER_NAMES
from latentgraph.plugins import load_plugins
from latentgraph.sampling.schedule import DiscreteSchedule

NAME = "latentgraph-shapes.safetensors"

PACK = Path(__file__).resolve().parent / "fixtures" / "packs" / "sampling_api_pack"


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampling_api")
    shutil.copytree(PACK, root / "custom_nodes" / "sampling_pack")
    env = Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                      models_dir=root / "models", device="cpu")  # an empty models folder: the shipped one is found
    registry = create_registry()
    (info,) = load_plugins(registry, [root / "custom_nodes"], entry_points=False, env=env)
    assert (info.status, info.error, info.missing) == ("loaded", None, [])
    executor = Executor(registry, env, services=create_services(env))
    pack = __import__("sys").modules["latentgraph_custom_nodes.sampling_pack"]
    return executor, registry, pack


def _prompt(**nodes) -> dict:
    base = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": NAME}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": "a red circle"}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["ckpt", 1], "text": ""}},
            "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}}
    base.update({k: {"class_type": v[0], "inputs": v[1]} for k, v in nodes.items()})
    return base


def _run(executor, prompt, targets, events=None):
    listener = None if events is None else (lambda kind, data: events.append((kind, data)))
    return executor.run(Workflow.from_api(prompt), listener=listener, targets=targets)


COMMON = {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0]}


def test_the_combo_lists_are_comfyuis(site):
    samplers = comfy_compat.import_module("comfy.samplers")
    # ComfyUI 0.3.64's lists, in its order
    assert samplers.KSampler.SAMPLERS == samplers.SAMPLER_NAMES == SAMPLER_NAMES
    assert samplers.SAMPLER_NAMES == samplers.KSAMPLER_NAMES + ["ddim", "uni_pc", "uni_pc_bh2"]
    assert samplers.KSAMPLER_NAMES[:4] == ["euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp"]
    assert samplers.KSampler.SCHEDULERS == samplers.SCHEDULER_NAMES == SCHEDULER_NAMES == [
        "simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal", "linear_quadratic",
        "kl_optimal"]
    assert samplers.SAMPLER_NAMES is not SAMPLER_NAMES  # a pack extending the layer's list leaves ours alone
    executor, registry, pack = site
    info = registry["PackNoiseThenSample"].object_info()["input"]["required"]
    assert info["sampler_name"][0] == SAMPLER_NAMES and info["scheduler"][0] == SCHEDULER_NAMES


@pytest.mark.parametrize("sampler,scheduler,denoise", [("euler", "normal", 1.0), ("dpmpp_2m", "karras", 0.6),
                                                       ("euler_ancestral", "simple", 1.0), ("dpm_2", "normal", 1.0)])
def test_prepare_noise_and_sample_equal_ksampler(site, sampler, scheduler, denoise):
    executor, registry, pack = site
    settings = {"seed": 7, "steps": 3, "cfg": 5.0, "sampler_name": sampler, "scheduler": scheduler,
                "denoise": denoise, **COMMON}
    pack.CALLBACKS.clear()
    result = _run(executor, _prompt(ours=("KSampler", settings), pack=("PackNoiseThenSample", settings)),
                  ["ours", "pack"])
    ours, theirs = result.get("ours", 0)["samples"], result.get("pack", 0)["samples"]
    assert ours.shape == (1, 4, 8, 8) and torch.equal(ours, theirs)
    # ComfyUI's callback arguments: (step, x0, x, total_steps), once per step
    assert pack.CALLBACKS["sample"] == [(i, 3, (1, 4, 8, 8), (1, 4, 8, 8)) for i in range(3)]
    # KSampler.sigmas is what latentgraph's KSampler ran: dpm_2 drops the penultimate sigma of 4 steps
    sigmas = result.get("pack", 1)
    assert sigmas.shape == (4,) and float(sigmas[-1]) == 0.0


def test_noise_mask_and_ddim_equal_ksampler(site):
    executor, registry, pack = site
    settings = {"seed": 3, "steps": 3, "cfg": 4.0, "sampler_name": "ddim", "scheduler": "simple", "denoise": 1.0,
                **COMMON, "latent_image": ["masked", 0]}
    prompt = _prompt(mask=("SolidMask", {"value": 0.5, "width": 64, "height": 64}),
                     masked=("SetLatentNoiseMask", {"samples": ["latent", 0], "mask": ["mask", 0]}),
                     ours=("KSampler", settings), pack=("PackNoiseThenSample", settings))
    result = _run(executor, prompt, ["ours", "pack"])
    out = result.get("pack", 0)
    assert torch.equal(result.get("ours", 0)["samples"], out["samples"])
    mask = out["noise_mask"]  # the dict's other keys kept
    assert mask.shape[-2:] == (64, 64) and bool((mask == 0.5).all())


@pytest.mark.parametrize("start,end,add_noise,leftover", [(1, 3, True, False), (0, 2, True, True),
                                                         (1, 10000, False, False), (5, 10000, True, False)])
def test_common_ksampler_equals_ksampler_advanced(site, start, end, add_noise, leftover):
    executor, registry, pack = site
    common = {"steps": 3, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", **COMMON}
    ours = {**common, "noise_seed": 11, "add_noise": "enable" if add_noise else "disable", "start_at_step": start,
            "end_at_step": end, "return_with_leftover_noise": "enable" if leftover else "disable"}
    theirs = {**common, "seed": 11, "start": start, "end": end, "add_noise": add_noise, "leftover": leftover}
    events = []
    result = _run(executor, _prompt(ours=("KSamplerAdvanced", ours), pack=("PackAdvanced", theirs)),
                  ["ours", "pack"], events)
    a, b = result.get("ours", 0)["samples"], result.get("pack", 0)["samples"]
    assert torch.equal(a, b)
    ran = max(0, min(end, 3) - start)
    assert bool((b == 0).all()) == (ran == 0)  # past the end: the empty latent comes back as it is
    # latent_preview's callback ticks the running node's progress, once per step it ran
    progress = [(d["value"], d["max"]) for kind, d in events if kind == "progress" and d["node"] == "pack"]
    assert progress == [(i + 1, ran) for i in range(ran)]


def test_a_ksampler_over_a_k_diffusion_function_runs_in_sampler_custom(site):
    executor, registry, pack = site
    custom = {"model": ["ckpt", 0], "add_noise": True, "noise_seed": 5, "cfg": 5.0, "positive": ["pos", 0],
              "negative": ["neg", 0], "sigmas": ["sched", 0], "latent_image": ["latent", 0]}
    scheduler = {"model": ["ckpt", 0], "scheduler": "karras", "steps": 3, "denoise": 1.0}
    prompt = _prompt(sched=("BasicScheduler", scheduler),
                     euler=("KSamplerSelect", {"sampler_name": "euler"}),
                     plain=("PackDampedEuler", {"damping": 1.0}), damped=("PackDampedEuler", {"damping": 0.5}),
                     wrap=("PackWrapSampler", {"sampler": ["plain", 0], "scale": 1.0}),
                     ours=("SamplerCustom", {**custom, "sampler": ["euler", 0]}),
                     theirs=("SamplerCustom", {**custom, "sampler": ["plain", 0]}),
                     damp=("SamplerCustom", {**custom, "sampler": ["damped", 0]}),
                     wrapped=("SamplerCustom", {**custom, "sampler": ["wrap", 0]}))
    result = _run(executor, prompt, ["ours", "theirs", "damp", "wrapped"])
    ours, theirs, damp = (result.get(n, 0)["samples"] for n in ("ours", "theirs", "damp"))
    assert torch.equal(ours, theirs)  # the pack's Euler is latentgraph's, step for step
    assert torch.equal(ours, result.get("wrapped", 0)["samples"])  # a KSAMPLER wrapping another one
    assert torch.equal(result.get("ours", 1)["samples"], result.get("theirs", 1)["samples"])  # denoised output too
    assert (ours - damp).abs().max() > 1e-2  # the extra option reached the function
    assert torch.isfinite(damp).all()


def test_sample_custom_with_sampler_object_equals_sampler_custom(site):
    executor, registry, pack = site
    custom = {"model": ["ckpt", 0], "add_noise": True, "noise_seed": 9, "cfg": 5.0, "positive": ["pos", 0],
              "negative": ["neg", 0], "sigmas": ["sched", 0], "latent_image": ["latent", 0]}
    prompt = _prompt(sched=("BasicScheduler", {"model": ["ckpt", 0], "scheduler": "exponential", "steps": 3,
                                               "denoise": 1.0}),
                     sel=("KSamplerSelect", {"sampler_name": "dpmpp_2m"}),
                     ours=("SamplerCustom", {**custom, "sampler": ["sel", 0]}),
                     pack=("PackCustomSample", {"seed": 9, "steps": 3, "cfg": 5.0, "sampler_name": "dpmpp_2m",
                                                "scheduler": "exponential", **COMMON}))
    result = _run(executor, prompt, ["ours", "pack"])
    assert torch.equal(result.get("ours", 0)["samples"], result.get("pack", 0)["samples"])


def test_a_pack_cfg_guider_runs_in_sampler_custom_advanced(site):
    executor, registry, pack = site
    pack.CALLBACKS.clear()
    scheduler = {"model": ["ckpt", 0], "scheduler": "normal", "steps": 3, "denoise": 1.0}
    prompt = _prompt(sched=("BasicScheduler", scheduler),
                     sel=("KSamplerSelect", {"sampler_name": "euler"}),
                     noise=("RandomNoise", {"noise_seed": 4}),
                     cfgg=("CFGGuider", {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                                         "cfg": 6.0}),
                     packg=("PackGuider", {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                                           "cfg": 6.0, "plain_from": 100}),
                     plaing=("PackGuider", {"model": ["ckpt", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                                            "cfg": 6.0, "plain_from": 2}))
    for name, guider in (("ours", "cfgg"), ("pack", "packg"), ("plain", "plaing")):
        prompt[name] = {"class_type": "SamplerCustomAdvanced",
                        "inputs": {"noise": ["noise", 0], "guider": [guider, 0], "sampler": ["sel", 0],
                                   "sigmas": ["sched", 0], "latent_image": ["latent", 0]}}
    events = []
    result = _run(executor, prompt, ["ours", "pack", "plain", "pos"], events)
    ours, theirs, plain = (result.get(n, 0)["samples"] for n in ("ours", "pack", "plain"))
    assert torch.equal(ours, theirs)
    assert (ours - plain).abs().max() > 1e-3  # cfg 1 on the last step changed the picture
    first, second = pack.CALLBACKS["guiders"]
    assert first.calls == [(0, 4), (1, 4), (2, 4)] and second.calls == first.calls  # one call a step, the seed
    # original_conds kept as ComfyUI keeps them (convert_cond); conds are the CONDITIONING again after sampling
    pos = result.get("pos", 0)
    (entry,) = first.original_conds["positive"]
    assert entry["cross_attn"] is pos[0][0] and entry["model_conds"] == {} and isinstance(entry["uuid"], UUID)
    assert {k: v for k, v in entry.items() if k not in ("cross_attn", "model_conds", "uuid")} == pos[0][1]
    assert [[t, o] for t, o in first.conds["positive"]] == [[pos[0][0], pos[0][1]]]
    progress = [(d["value"], d["max"]) for kind, d in events if kind == "progress" and d["node"] == "pack"]
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_calculate_sigmas_equals_basic_scheduler(site):
    executor, registry, pack = site
    samplers = comfy_compat.import_module("comfy.samplers")
    schedule = DiscreteSchedule()
    prompt = _prompt(**{f"s_{name}": ("BasicScheduler", {"model": ["ckpt", 0], "scheduler": name, "steps": 5,
                                                          "denoise": 1.0}) for name in SCHEDULER_NAMES})
    result = _run(executor, prompt, ["ckpt"] + [f"s_{name}" for name in SCHEDULER_NAMES])
    model = result.get("ckpt", 0)
    for name in SCHEDULER_NAMES:
        full = samplers.calculate_sigmas(model.schedule, name, 5)
        assert torch.equal(full[-6:], result.get(f"s_{name}", 0)), name
        assert torch.equal(samplers.calculate_sigmas(schedule, name, 5), full), name
    # what packs pass: the MODEL's model_sampling (its noise schedule)
    assert torch.equal(samplers.calculate_sigmas(model.get_model_object("model_sampling"), "karras", 5),
                       result.get("s_karras", 0))
    karras = samplers.calculate_sigmas(schedule, "karras", 4)
    assert karras.shape == (5,) and float(karras[-1]) == 0.0
    assert math.isclose(float(karras[0]), float(schedule.sigma_max), rel_tol=1e-5)
    with pytest.raises(ValueError, match="invalid scheduler 'karras2'"):
        samplers.calculate_sigmas(schedule, "karras2", 4)
    with pytest.raises(TypeError, match="noise schedule"):
        samplers.calculate_sigmas(model, "karras", 4)  # the MODEL, not its model_sampling
    # KSampler's own rules: denoise keeps the tail of a longer schedule; dpm_2 drops a penultimate sigma
    k = samplers.KSampler(model, 4, "cpu", "euler", "karras", denoise=0.5)
    assert torch.equal(k.sigmas, samplers.calculate_sigmas(schedule, "karras", 8)[-5:])
    d2 = samplers.KSampler(model, 4, None, "dpm_2", "karras").sigmas
    five = samplers.calculate_sigmas(schedule, "karras", 5)
    assert torch.equal(d2, torch.cat([five[:-2], five[-1:]]))
    assert samplers.KSampler(model, 4, "cpu", denoise=0.0).sigmas.numel() == 0
    with pytest.raises(ValueError, match="unknown sampler 'euler_a'"):
        samplers.KSampler(model, 4, "cpu", "euler_a", "karras")


def test_sampler_objects_and_latentgraph_sampler_values():
    samplers = comfy_compat.import_module("comfy.samplers")
    kd = comfy_compat.import_module("comfy.k_diffusion.sampling")
    from latentgraph.sampling import samplers as ours
    from latentgraph.sampling.ksampler import SamplerChoice, sampler_parts

    euler = samplers.sampler_object("euler")
    assert euler.sampler_function is kd.sample_euler is ours.SAMPLERS["euler"]
    assert isinstance(euler, SamplerChoice) and sampler_parts(euler) == ("euler", {})
    ddim = samplers.sampler_object("ddim")
    assert ddim.sampler_function is kd.sample_euler and ddim.inpaint_options == {"random": True}
    assert ddim.sampler_name == "ddim"  # the inpainting rule latentgraph applies by name
    assert samplers.sampler_object("uni_pc_bh2").sampler_function is ours.SAMPLERS["uni_pc_bh2"]
    fast = samplers.ksampler("dpm_fast")
    assert fast.sampler_function is ours.SAMPLERS["dpm_fast"]  # the sigma-list form KSampler hands sigmas to
    opts = samplers.ksampler("euler_ancestral", {"eta": 0.5})
    assert sampler_parts(opts) == ("euler_ancestral", {"eta": 0.5})
    opts.extra_options["s_noise"] = 0.9  # packs change a KSAMPLER's attributes in place
    opts.sampler_function = kd.sample_heun
    assert sampler_parts(opts) == ("heun", {"eta": 0.5, "s_noise": 0.9})
    with pytest.raises(ValueError, match="unknown sampler 'nope'"):
        samplers.ksampler("nope")
    # latentgraph's own SAMPLER values as packs see them (a name, a SamplerChoice with options)
    as_k = samplers._as_ksampler
    assert as_k("dpmpp_2m").sampler_function is ours.SAMPLERS["dpmpp_2m"]
    choice = as_k(SamplerChoice("lms", {"order": 3}))
    assert choice.sampler_function is ours.SAMPLERS["lms"] and choice.extra_options == {"order": 3}
    assert as_k(SamplerChoice("ddim")).sampler_name == "ddim" and as_k(euler) is euler
    with pytest.raises(TypeError, match="callable"):
        samplers.KSAMPLER("euler")
    wrap = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=DiscreteSchedule()))
    full = samplers.calculate_sigmas(wrap.inner_model.model_sampling, "normal", 3)
    assert euler.max_denoise(wrap, full) and not euler.max_denoise(wrap, full[1:])
    with pytest.raises(AttributeError, match="KSAMPLER.sample"):
        euler.sample(None, None, None, None, None)


def test_k_diffusion_helpers_by_value():
    kd = comfy_compat.import_module("comfy.k_diffusion.sampling")
    x = torch.zeros(2, 4, 3, 3)
    draw = kd.default_noise_sampler(x, seed=42)
    g = torch.Generator().manual_seed(42)
    first, second = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    assert torch.equal(draw(1.0, 0.5), first) and torch.equal(draw(0.5, 0.1), second)
    down, up = kd.get_ancestral_step(torch.tensor(2.0), torch.tensor(1.0))
    assert math.isclose(float(up), 0.75 ** 0.5, rel_tol=1e-6) and math.isclose(float(down), 0.5, rel_tol=1e-6)
    assert kd.get_ancestral_step(2.0, 1.0, eta=0.0) == (1.0, 0.0)
    d = kd.to_d(torch.full((1, 1, 2, 2), 3.0), torch.tensor([2.0]), torch.ones(1, 1, 2, 2))
    assert torch.equal(d, torch.ones(1, 1, 2, 2))
    karras = kd.get_sigmas_karras(4, 0.1, 10.0, rho=7.0)
    ramp = torch.linspace(0, 1, 4)
    expected = (10.0 ** (1 / 7) + ramp * (0.1 ** (1 / 7) - 10.0 ** (1 / 7))) ** 7
    assert torch.equal(karras, torch.cat([expected, torch.zeros(1)]))
    assert torch.allclose(kd.get_sigmas_exponential(3, 1.0, 100.0), torch.tensor([100.0, 10.0, 1.0, 0.0]))
    assert torch.equal(kd.append_zero(torch.ones(2)), torch.tensor([1.0, 1.0, 0.0]))
    # one Brownian tree per batch item: item k is what a tree of its own seed gives
    y = torch.zeros(2, 1, 4, 4)
    both = kd.BrownianTreeNoiseSampler(y, 0.1, 10.0, seed=[3, 4], cpu=True)(torch.tensor(5.0), torch.tensor(2.0))
    alone = kd.BrownianTreeNoiseSampler(y[:1], 0.1, 10.0, seed=4, cpu=True)(torch.tensor(5.0), torch.tensor(2.0))
    assert both.shape == (2, 1, 4, 4) and torch.equal(both[1:], alone)
    assert 0.3 < float(both.std()) < 2.0  # unit-variance increments
    with pytest.raises(ValueError, match="2 seeds for a batch of 1"):
        kd.BrownianTreeNoiseSampler(y[:1], 0.1, 10.0, seed=[1, 2])
    with pytest.raises(ValueError, match="return_info"):
        kd.sample_dpm_adaptive(None, x, 0.1, 10.0, return_info=True)


def test_an_analytic_denoiser_through_k_diffusion_signatures():
    """The samplers as packs call them: a denoiser whose every prediction is 0 makes Euler
    shrink x by sigma_next / sigma each step, to 0 at the end."""
    kd = comfy_compat.import_module("comfy.k_diffusion.sampling")
    x = torch.ones(1, 1, 2, 2) * 10.0
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    seen = []

    def zero(x, sigma, **extra):
        seen.append(sorted(extra))
        return torch.zeros_like(x)

    steps = []
    out = kd.sample_euler(zero, x, sigmas, extra_args={"seed": 1}, callback=lambda d: steps.append(float(d["sigma"])))
    assert torch.equal(out, torch.zeros_like(x)) and steps == [10.0, 5.0, 1.0] and seen == [["seed"]] * 3
    mid = kd.sample_euler(zero, x, sigmas[:3])
    assert torch.allclose(mid, torch.ones_like(x))  # 10 * 5/10 * 1/5
    fast = kd.sample_dpm_fast(zero, x, 1.0, 10.0, 3)  # k-diffusion's sigma-range signature
    assert torch.allclose(fast, torch.ones_like(x), rtol=1e-4)


def test_missing_sampling_names_are_reported(tmp_path):
    pack = tmp_path / "nodes_dir" / "wants_internals"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        import comfy.samplers
        WRAP = comfy.samplers.get_area_and_mult
        NODE_CLASS_MAPPINGS = {}
    """))
    (info,) = load_plugins(create_registry(), [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "needs ComfyUI" and info.missing == ["comfy.samplers.get_area_and_mult"]
    assert comfy_compat.provides("comfy.samplers.KSamplerX0Inpaint")
    assert comfy_compat.provides("comfy.samplers.KSampler.SAMPLERS")
    assert comfy_compat.provides("comfy.sample.prepare_noise")
    assert comfy_compat.provides("comfy.k_diffusion.sampling.sample_dpmpp_2m_sde_gpu")
    assert comfy_compat.provides("nodes.common_ksampler")
    assert not comfy_compat.provides("comfy.k_diffusion.sampling.sample_euler_ancestral_RF")


def test_folder_of_images(tmp_path):
    from PIL import Image

    utils = comfy_compat.import_module("comfy.k_diffusion.utils")
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (3, 2), (10, 20, 30)).save(tmp_path / "b.png")
    Image.new("L", (2, 2), 200).save(tmp_path / "sub" / "a.JPG", quality=100)
    (tmp_path / "notes.txt").write_text("not an image")
    folder = utils.FolderOfImages(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in folder.paths] == ["b.png", "sub/a.JPG"] and len(folder) == 2
    (image,) = folder[0]
    assert image.mode == "RGB" and image.size == (3, 2) and image.getpixel((0, 0)) == (10, 20, 30)
    assert utils.FolderOfImages(tmp_path, transform=lambda im: im.size)[1] == ((2, 2),)
    assert ".webp" in utils.FolderOfImages.IMG_EXTENSIONS and ".gif" not in utils.FolderOfImages.IMG_EXTENSIONS
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        utils.FolderOfImages(tmp_path / "absent")
    assert torch.equal(utils.append_dims(torch.ones(2), 4), torch.ones(2, 1, 1, 1))


def test_bad_values_get_errors_naming_them(site):
    executor, registry, pack = site
    result = _run(executor, _prompt(), ["ckpt", "pos"])
    model, positive = result.get("ckpt", 0), result.get("pos", 0)
    samplers = comfy_compat.import_module("comfy.samplers")
    sample = comfy_compat.import_module("comfy.sample")
    # an empty latent is widened or cut to the model's 4 channels; one with content is left alone
    assert sample.fix_empty_latent_channels(model, torch.zeros(1, 16, 8, 8)).shape == (1, 4, 8, 8)
    assert sample.fix_empty_latent_channels(model, torch.zeros(2, 1, 8, 8)).shape == (2, 4, 8, 8)
    assert sample.fix_empty_latent_channels(model, torch.ones(1, 16, 8, 8)).shape == (1, 16, 8, 8)
    # later ComfyUI versions pass a LATENT's downscale ratios, None for latents without them
    assert sample.fix_empty_latent_channels(model, torch.zeros(1, 1, 8, 8), None, None).shape == (1, 4, 8, 8)
    with pytest.raises(ValueError, match="downscale ratios"):
        sample.fix_empty_latent_channels(model, torch.zeros(1, 4, 8, 8), 8, None)
    noise = sample.prepare_noise(torch.zeros(3, 4, 8, 8), 5, [2, 0, 2])
    single = sample.prepare_noise(torch.zeros(3, 4, 8, 8)[:1], 5)
    assert torch.equal(noise[1], single[0]) and torch.equal(noise[0], noise[2]) and noise.dtype == torch.float32
    # past the last step the latent comes back untouched, without running the model
    latent = torch.full((1, 4, 8, 8), 0.5)
    out = sample.sample(model, torch.zeros_like(latent), 3, 5.0, "euler", "normal", positive, positive, latent,
                        start_step=3)
    assert out is latent
    with pytest.raises(TypeError, match="expected a MODEL value"):
        samplers.KSampler("model", 3, "cpu")
    with pytest.raises(TypeError, match="expected a MODEL value"):
        samplers.CFGGuider(None)
    with pytest.raises(ValueError, match="unknown scheduler 'karas'"):
        samplers.KSampler(model, 3, "cpu", "euler", "karas")
    with pytest.raises(TypeError, match="ComfyUI's processed dicts"):
        samplers.calc_cond_batch(model, [[{"model_conds": {}}], None], latent, torch.ones(1), {})

    class OwnSampler(samplers.Sampler):  # a pack's Sampler subclass samples through ComfyUI's internals
        pass

    with pytest.raises(AttributeError, match="Sampler.sample"):
        samplers.sample(model, latent, positive, positive, 5.0, "cpu", OwnSampler(), torch.tensor([1.0, 0.0]),
                        latent_image=latent)
    with pytest.raises(ValueError, match="latent_image is None"):
        samplers.sample(model, latent, positive, positive, 5.0, "cpu", samplers.sampler_object("euler"),
                        torch.tensor([1.0, 0.0]))


def test_a_pack_replacing_a_function_is_followed_through_the_layer_and_told(site, monkeypatch, caplog):
    executor, registry, pack = site
    sample = comfy_compat.import_module("comfy.sample")
    kd = comfy_compat.import_module("comfy.k_diffusion.sampling")
    samplers = comfy_compat.import_module("comfy.samplers")
    original, calls = sample.prepare_noise, []

    def noise_source(latent_image, seed, noise_inds=None):  # as efficiency-nodes swaps in its noise source
        calls.append((tuple(latent_image.shape), seed, noise_inds))
        return original(latent_image, seed, noise_inds)

    with caplog.at_level("WARNING", logger="latentgraph.comfy_compat"):
        monkeypatch.setattr(sample, "prepare_noise", noise_source)
        monkeypatch.setattr(kd, "sample_euler", pack.damped_euler)
    assert [r.getMessage() for r in caplog.records] == [
        f"a pack replaced {name}: calls through ComfyUI's modules use the replacement; latentgraph's own sampler "
        f"nodes (KSampler, SamplerCustom, ...) keep theirs"
        for name in ("comfy.sample.prepare_noise", "comfy.k_diffusion.sampling.sample_euler")]
    assert samplers.sampler_object("euler").sampler_function is pack.damped_euler
    settings = {"seed": 123, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal", **COMMON,
                "start": 0, "end": 10000, "add_noise": True, "leftover": False}
    _run(executor, _prompt(pack=("PackAdvanced", settings)), ["pack"])
    assert calls == [((1, 4, 8, 8), 123, None)]  # nodes.common_ksampler looked it up in comfy.sample


def test_sampler_helpers_and_converted_conditionings(site):
    executor, registry, pack = site
    result = _run(executor, _prompt(), ["ckpt", "pos", "neg"])
    model, positive, negative = result.get("ckpt", 0), result.get("pos", 0), result.get("neg", 0)
    helpers = comfy_compat.import_module("comfy.sampler_helpers")
    samplers = comfy_compat.import_module("comfy.samplers")
    tagged = [[positive[0][0], {**positive[0][1], "control": "c1"}], [negative[0][0], {"control": ["c2", "c3"]}]]
    converted = helpers.convert_cond(tagged)
    assert [c["cross_attn"] for c in converted] == [positive[0][0], negative[0][0]]
    assert converted[0]["uuid"] != converted[1]["uuid"] and converted[1]["model_conds"] == {}
    assert tagged[1][1] == {"control": ["c2", "c3"]}  # the options are copied, not changed
    assert helpers.get_models_from_cond(converted, "control") == ["c1", "c2", "c3"]
    with pytest.raises(TypeError, match="entry 0 is not a \\[tensor, options\\] pair"):
        helpers.convert_cond([positive[0][0]])
    mask = helpers.prepare_mask(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), (2, 4, 4, 4), "cpu")
    assert mask.shape == (2, 4, 4, 4) and torch.equal(mask[1], mask[0]) and torch.equal(mask[0, 3], mask[0, 0])
    assert float(mask[0, 0, 0, 0]) == 0.0 and float(mask[0, 0, 0, 3]) == 1.0
    cleaned = []
    helpers.cleanup_additional_models([SimpleNamespace(cleanup=lambda: cleaned.append(1)), object()])
    assert cleaned == [1] and helpers.get_additional_models({"positive": converted}, torch.float32) == ([], 0)
    # a pack filling original_conds itself (converted, as ComfyUI keeps them) samples as set_conds does
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    latent, euler = torch.zeros(1, 4, 8, 8), samplers.sampler_object("euler")
    sigmas = samplers.KSampler(model, 2, "cpu", "euler", "karras").sigmas
    plain = samplers.sample(model, noise, positive, negative, 4.0, "cpu", euler, sigmas, latent_image=latent, seed=1)
    guider = samplers.CFGGuider(model)
    guider.original_conds = {"positive": helpers.convert_cond(positive), "negative": helpers.convert_cond(negative)}
    guider.set_cfg(4.0)
    assert torch.equal(guider.sample(noise, latent, euler, sigmas, seed=1), plain)
    guider.original_conds["negative"][0]["model_conds"] = {"c_crossattn": None}
    with pytest.raises(ValueError, match="'negative': an entry carries model_conds \\(c_crossattn\\)"):
        guider.sample(noise, latent, euler, sigmas, seed=1)


def test_our_sampler_values_reach_a_pack_as_comfyuis_ksampler(site):
    """KSamplerSelect gives latentgraph's SAMPLER value; a pack node wrapping it reads
    ``sampler.sampler_function`` and ``.extra_options`` (Detail Daemon's pattern): the adapter
    hands it the layer's KSAMPLER, and at scale 1 the wrapped sampler equals the plain one."""
    executor, registry, pack = site
    custom = {"model": ["ckpt", 0], "add_noise": True, "noise_seed": 5, "cfg": 5.0, "positive": ["pos", 0],
              "negative": ["neg", 0], "sigmas": ["sched", 0], "latent_image": ["latent", 0]}
    prompt = _prompt(sched=("BasicScheduler", {"model": ["ckpt", 0], "scheduler": "karras", "steps": 3,
                                               "denoise": 1.0}),
                     sel=("KSamplerSelect", {"sampler_name": "dpmpp_2m"}),
                     wrap=("PackWrapSampler", {"sampler": ["sel", 0], "scale": 1.0}),
                     wrap2=("PackWrapSampler", {"sampler": ["sel", 0], "scale": 2.0}),
                     plain=("SamplerCustom", {**custom, "sampler": ["sel", 0]}),
                     wrapped=("SamplerCustom", {**custom, "sampler": ["wrap", 0]}),
                     doubled=("SamplerCustom", {**custom, "sampler": ["wrap2", 0]}))
    result = _run(executor, prompt, ["plain", "wrapped", "doubled"])
    plain = result.get("plain", 0)["samples"]
    assert torch.equal(plain, result.get("wrapped", 0)["samples"])
    assert not torch.allclose(plain, result.get("doubled", 0)["samples"], atol=1e-3)  # the wrapper does act

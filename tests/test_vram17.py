"""The GPU memory manager (models/vram.py) on a fake device with a small budget: LRU offload,
partial loading, out-of-memory recovery and its error, the --vram-budget flag, and the plan for
SDXL base + refiner + a ControlNet under 12 GiB (on meta tensors)."""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import Annotated

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from latentgraph.cli import _env, build_parser
from latentgraph.graph import Environment, Executor, Int, NodeExecutionError, NodeRegistry, Workflow, node
from latentgraph.models.latent import decode_latent
from latentgraph.models.management import Placement
from latentgraph.models.vram import (GiB, FakeDevice, FakeOutOfMemory, GPUOutOfMemory, MemoryManager, TorchDevice,
                                     layers, manager_for, module_bytes, tensor_bytes)
from latentgraph.nodes import create_registry, create_services

ROOT = Path(__file__).resolve().parents[1]
LAYER = (16 * 16 + 16) * 4  # bytes of one Linear(16, 16) in float32: 1088


def chain(n: int, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(*[nn.Linear(16, 16) for _ in range(n)])


def manager(capacity: int, budget: int | None = None, reserve: int = 0, **named) -> MemoryManager:
    """A manager over a fake device; ``budget`` defaults to the capacity."""
    m = MemoryManager(FakeDevice(capacity), budget or capacity, reserve)
    for name, module in named.items():
        m.register(module, name)
    return m


def run(m: MemoryManager, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad(), m.use(module):
        return module(x)


X = torch.linspace(-1, 1, 16).reshape(1, 16)


# -- LRU -----------------------------------------------------------------------------------
def test_lru_evicts_the_least_recently_used_first():
    a, b, c = chain(2, 1), chain(2, 2), chain(2, 3)
    assert module_bytes(a) == 2 * LAYER == 2176
    m = manager(5000, A=a, B=b, C=c)  # two of the three fit
    run(m, a, X), run(m, b, X)
    assert m.resident() == [("A", 2176), ("B", 2176)] and list(m.evicted) == []
    run(m, c, X)
    assert list(m.evicted) == ["A"] and m.resident() == [("B", 2176), ("C", 2176)]
    run(m, b, X)  # B is now the most recent: A comes back in place of C
    run(m, a, X)
    assert list(m.evicted) == ["A", "C"] and m.resident() == [("B", 2176), ("A", 2176)]
    assert m.device.allocated == 4352 and m.device.peak == 4352


def test_modules_stay_resident_between_uses_and_outputs_do_not_change():
    a = chain(2)
    with torch.no_grad():
        expected = a(X)
    m = manager(5000, A=a)
    for _ in range(3):
        assert torch.equal(run(m, a, X), expected)
    assert m.device.bytes_in == 2176  # moved once, not once per use as --lowvram does


def test_the_working_reserve_comes_out_of_the_budget():
    a, b = chain(2, 1), chain(2, 2)
    m = manager(5000, reserve=1000, A=a, B=b)  # weights get 4000: one module at a time
    run(m, a, X)
    assert m.device.peak == 2176 + 1000  # the weights and the reserve, booked while A ran
    run(m, b, X)
    assert list(m.evicted) == ["A"] and m.resident() == [("B", 2176)]
    assert m.device.allocated == 2176  # the working memory was given back


def test_a_running_module_is_never_evicted():
    a, b = chain(2, 1), chain(3, 2)
    with torch.no_grad():
        expected = b(X)
    m = manager(5000, A=a, B=b)
    with m.use(a):  # B must fit beside A: 5000 - 2176 = 2824 left, less a streamed layer: 1736
        out = run(m, b, X)
        assert m.entry(a).state == "resident" and list(m.evicted) == []
        e = m.entry(b)
        assert (e.state, e.layers_resident, e.layers_streamed) == ("partial", 1, 2)
    assert torch.equal(out, expected)
    assert m.device.peak == 2176 + 1088 + 1088  # A, B's first layer, one streamed layer at a time


def test_twins_sharing_a_tensor_keep_it_while_one_runs():
    shared = nn.Linear(16, 16)
    base, twin, other = nn.Sequential(shared, nn.Linear(16, 16)), nn.Sequential(shared, nn.Linear(16, 16)), chain(2, 5)
    m = manager(6000, BASE=base, TWIN=twin, OTHER=other)  # two of the three fit
    run(m, base, X)
    with m.use(twin):  # the twin runs while something else (a ControlNet) asks for room
        m.ensure(other)
        assert "BASE" in m.evicted
        assert m.device.holds(shared.weight) and m.device.holds(shared.bias)  # the running twin keeps them
        with torch.no_grad():
            twin(X)  # the fake device refuses a layer whose tensors were sent home


def test_a_module_that_is_dropped_gives_its_bytes_back():
    a = chain(2)
    m = manager(5000, A=a)
    run(m, a, X)
    assert m.device.allocated == 2176
    del a
    gc.collect()
    assert m.device.allocated == 0 and m.resident() == []


# -- the fake device ------------------------------------------------------------------------
def test_the_fake_device_refuses_a_layer_that_was_not_moved_in():
    a = chain(2)
    m = manager(5000, A=a)
    with pytest.raises(RuntimeError) as err, torch.no_grad():
        a(X)
    assert str(err.value) == ("fake device of 4.9 KiB: layer 0 ran with 2 of 2 tensors in host memory "
                              "(they were never moved to the device)")


def test_the_fake_device_runs_out_of_memory_past_its_capacity():
    dev = FakeDevice(2000)
    dev.book(1500, "one")
    with pytest.raises(FakeOutOfMemory) as err:
        dev.book(600, "two")
    assert str(err.value) == "fake device of 2.0 KiB: out of memory: two needs 600 B, 500 B free"
    assert dev.allocated == 1500


# -- partial loading ---------------------------------------------------------------------
def test_a_module_bigger_than_the_budget_is_loaded_in_part():
    big = chain(10)
    with torch.no_grad():
        expected = big(X)
    m = manager(5000, BIG=big)
    out = run(m, big, X)
    e = m.entry(big)
    # 5000 bytes less room for one streamed layer (1088) holds 3 layers of 1088, not 4
    assert (e.state, e.layers_resident, e.layers_streamed, e.resident_bytes) == ("partial", 3, 7, 3264)
    assert torch.equal(out, expected)
    assert m.device.peak == 4 * LAYER and m.device.allocated == 3264  # streamed layers went back
    assert m.device.bytes_in == 3264 + 7 * LAYER
    assert torch.equal(run(m, big, X), expected) and e.partial_loads == 1  # the split is kept


def test_a_tiny_unet_loaded_in_part_is_bit_identical():
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.unet import UNetModel

    torch.manual_seed(0)
    unet = UNetModel(tiny_architecture("sd15").unet).eval()
    gen = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([999.0, 10.0])
    with torch.no_grad():
        expected = unet(x, t, ctx)
    budget = module_bytes(unet) // 2
    m = manager(budget, UNET=unet)
    with torch.no_grad(), m.use(unet):
        out = unet(x, t, ctx)
    assert torch.equal(out, expected)
    e, parts = m.entry(unet), layers(unet)
    sizes = [sum(tensor_bytes(t) for t in ts) for _, _, ts in parts]
    room = budget - max(sizes)
    k = e.layers_resident
    assert e.state == "partial" and k + e.layers_streamed == len(parts)
    assert sum(sizes[:k]) <= room < sum(sizes[:k + 1])  # exactly the leading layers that fit
    assert m.device.peak <= budget


# -- out-of-memory recovery ----------------------------------------------------------------
def test_an_oom_on_the_first_try_recovers_by_offloading(caplog):
    a, b, c = chain(2, 1), chain(2, 2), chain(2, 3)
    with torch.no_grad():
        expected = c(X)
    # the budget says 10000, but only 5000 are free (another program holds the rest)
    m = manager(5000, 10000, A=a, B=b, C=c)
    run(m, a, X), run(m, b, X)
    calls = []

    def node():
        calls.append(m.level)
        return run(m, c, X)

    with caplog.at_level(logging.WARNING, "latentgraph.vram"):
        out = m.run_node("5", "KSampler", node)
    assert torch.equal(out, expected) and calls == [0, 1]
    assert m.level == 0 and m.resident() == [] and m.device.allocated == 0  # offloaded after use
    assert caplog.messages == ["node 5 (KSampler) ran out of device memory (models kept resident); trying again "
                               "with everything else freed and each model sent home after use"]


def test_three_failures_give_a_clear_error():
    a, b, d = chain(2, 1), chain(2, 2), nn.Linear(64, 64)  # D's one layer is bigger than the device
    m = manager(5000, 50000, A=a, B=b, D=d)
    run(m, a, X), run(m, b, X)
    calls = []

    def node():
        calls.append(m.level)
        return run(m, d, torch.ones(1, 64))

    with pytest.raises(GPUOutOfMemory) as err:
        m.run_node("7", "KSampler", node)
    assert calls == [0, 1, 2]
    assert str(err.value) == (
        "out of GPU memory in node 7 (KSampler) on fake device of 4.9 KiB after 3 tries (models kept resident; then "
        "everything else freed and each model sent home after use; then each model streamed layer by layer and the "
        "VAE tiled): budget 48.8 KiB with 0 B kept for working memory; resident at the first failure: A 2.1 KiB, "
        "B 2.1 KiB; last needed: D 16.2 KiB. The first error: fake device of 4.9 KiB: out of memory: D needs "
        "16.2 KiB, 648 B free. Try a smaller image or batch; if other programs hold GPU memory, free it or give a "
        "--vram-budget that fits what is free.")
    assert m.level == 0 and m.device.allocated == 0


def test_the_executor_runs_a_node_again_after_an_oom(env):
    """Through the executor's node guard: a node whose module does not fit beside what an
    earlier node left on the device runs again, alone, and its value flows on."""
    a, c = chain(4, 1), chain(2, 3)
    with torch.no_grad():
        expected = int(c(X).sum() * 1000)
    m = manager(5000, 10000, A=a, C=c)  # only 5000 of the budget's 10000 bytes are really free
    tries = []

    @node(category="test", outputs=["INT"])
    def Apply(which: Annotated[int, Int(0, min=0, max=1)]) -> int:
        module = (a, c)[which]
        tries.append((which, m.level))
        with torch.no_grad(), m.use(module):
            return int(module(X).sum() * 1000)

    registry = NodeRegistry()
    registry.register(Apply, source="tests")
    wf = Workflow()
    wf.add("first", "Apply", which=0)
    wf.add("second", "Apply", which=1)
    result = Executor(registry, env, services={"node_guard": m.run_node}).run(wf, targets=["first", "second"])
    assert result.get("second") == expected
    assert tries == [(0, 0), (1, 0), (1, 1)]  # A stayed resident; C failed beside it, then ran alone
    assert result.executed == ["first", "second"] and m.resident() == [] and m.device.allocated == 0


def test_other_errors_are_not_retried():
    m = manager(5000)
    calls = []

    def node():
        calls.append(1)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        m.run_node("1", "X", node)
    assert calls == [1]


def test_the_vae_decodes_tiled_on_the_last_try():
    from latentgraph.models.families import tiny_architecture
    from latentgraph.models.vae import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(tiny_architecture("sd15").vae).eval()
    placement = Placement()
    placement.memory = manager(10 * module_bytes(vae))
    tiled = []
    vae.decode_tiled = lambda z, tile, overlap: tiled.append((tile, overlap)) or vae.decode(z)
    z = torch.zeros(1, 4, 8, 8)
    decode_latent(vae, z, placement)
    assert tiled == []
    placement.memory.level = 2
    decode_latent(vae, z, placement)
    assert tiled == [(64, 8)]


# -- the flag and the front doors ---------------------------------------------------------
def test_the_vram_budget_flag_reaches_the_manager():
    for command in (["run", "flow.yaml"], ["serve"], ["batch", "jobs.yaml"]):
        args = build_parser().parse_args([*command, "--device", "cpu", "--vram-budget", "2.5"])
        env = _env(args)
        assert env.vram_budget == 2.5
        services = create_services(env)
        memory = services["placement"].memory
        assert isinstance(memory.device, FakeDevice) and memory.budget == int(2.5 * GiB) == 2684354560
        assert memory.reserve == int(0.15 * memory.budget) and services["node_guard"] == memory.run_node
    plain = create_services(_env(build_parser().parse_args(["run", "flow.yaml", "--device", "cpu"])))
    assert plain["placement"].memory is None and "node_guard" not in plain  # the CPU as before
    assert Environment().vram_budget == "auto"  # on CUDA: a manager from free memory; on the CPU: none


def test_bad_budgets_are_refused_with_the_flag_named():
    with pytest.raises(ValueError) as err:
        Environment(vram_budget="lots")
    assert str(err.value) == "--vram-budget: expected a number of GB (GiB, e.g. 12 or 7.5) or auto, got 'lots'"
    with pytest.raises(ValueError) as err:
        Environment(vram_budget="0")
    assert str(err.value) == "--vram-budget: the budget must be a number of GB above 0, got '0'"
    with pytest.raises(ValueError) as err:
        Placement.from_options("cpu", lowvram=True, vram_budget=2)
    assert str(err.value).startswith("--lowvram and --vram-budget both say how to use device memory: give one")
    assert Environment(vram_budget="auto").vram_budget == "auto"
    assert Placement.from_options("cpu", vram_budget="auto").memory is None  # no free-memory figure on the CPU
    assert Placement.from_options("cpu", lowvram=True, vram_budget="auto").memory is None  # --lowvram as before


def test_the_automatic_budget_is_free_memory_less_a_reserve(monkeypatch):
    free = {"bytes": 10 * GiB}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free["bytes"], 24 * GiB))
    assert manager_for(torch.device("cuda"), None) is None  # Placement.from_options' default: no manager
    m = manager_for(torch.device("cuda"), "auto")  # the front doors' default
    assert isinstance(m.device, TorchDevice) and m.budget == 10 * GiB and m.reserve == int(1.5 * GiB)
    free["bytes"] = 4 * GiB
    m = manager_for(torch.device("cuda"), "auto")
    assert m.budget == 4 * GiB and m.reserve == GiB  # at least 1 GiB for activations
    assert manager_for(torch.device("cuda"), 7).budget == 7 * GiB


def _run_demo(tmp_path: Path, budget):
    env = Environment(output_dir=tmp_path / str(budget), device="cpu", vram_budget=budget)
    services = create_services(env)
    Executor(create_registry(), env, services=services).run(ROOT / "workflows" / "txt2img.yaml")
    return services, np.asarray(Image.open(tmp_path / str(budget) / "txt2img_00001_.png"))


def test_the_demo_under_a_budget_that_splits_its_unet_gives_the_same_image(tmp_path):
    _, expected = _run_demo(tmp_path, None)
    services, image = _run_demo(tmp_path, 0.016)  # 16.4 MiB: the 16.0 MiB fp32 UNet does not fit
    memory = services["placement"].memory
    assert np.array_equal(image, expected)
    parts = {e.name: e for e in memory._entries.values()}
    assert parts["UNetModel"].partial_loads == 1
    assert parts["ClipTextEncoder"].partial_loads == parts["AutoencoderKL"].partial_loads == 0
    assert list(memory.evicted) == ["ClipTextEncoder", "UNetModel"]
    assert memory.device.peak <= memory.budget


def test_a_budget_too_small_for_one_layer_fails_the_node_with_the_message(tmp_path):
    with pytest.raises(NodeExecutionError) as err:
        _run_demo(tmp_path, 0.004)
    assert err.value.node_id == "positive"
    assert str(err.value.exception_message).startswith(
        "out of GPU memory in node positive (CLIPTextEncode) on simulated device of 4.1 MiB after 3 tries")
    assert "last needed: ClipTextEncoder 12.2 MiB. The first error: simulated device of 4.1 MiB: out of memory: " \
           "ClipTextEncoder needs 12.1 MiB, 4.1 MiB free." in err.value.exception_message


# -- the plan for SDXL base + refiner + ControlNet under 12 GiB ----------------------------------
def _sdxl_modules() -> dict[str, nn.Module]:
    """The published SDXL networks in fp16 on the meta device: sizes without weights."""
    from latentgraph.models.checkpoint import build_text_encoders
    from latentgraph.models.controlnet import ControlNet, ControlNetConfig
    from latentgraph.models.families import full_architecture
    from latentgraph.models.unet import UNetModel
    from latentgraph.models.vae import AutoencoderKL

    base, refiner = full_architecture("sdxl"), full_architecture("sdxl_refiner")
    with torch.device("meta"):
        text, text_r = build_text_encoders(base), build_text_encoders(refiner)
        mods = {"clip_l": text["l"], "clip_g": text["g"], "refiner_clip_g": text_r["g"],
                "base": UNetModel(base.unet), "controlnet": ControlNet(ControlNetConfig(base.unet, 3, "sdxl")),
                "refiner": UNetModel(refiner.unet), "vae": AutoencoderKL(base.vae)}
    return {k: v.to(torch.float16) for k, v in mods.items()}


def test_sdxl_base_refiner_and_a_controlnet_plan_under_12_gib():
    mods = _sdxl_modules()
    sizes = {k: module_bytes(v) for k, v in mods.items()}
    assert sizes["base"] == 5134927368 and sizes["refiner"] == 4519053320 and sizes["controlnet"] == 2502028320
    assert sum(sizes.values()) > 14 * GiB  # all of them do not fit in 12 GiB
    m = manager(12 * GiB, reserve=None, **mods)
    assert m.reserve == int(0.15 * 12 * GiB)

    def step(*names):
        """One node: the first module runs, the others are brought in within its run."""
        with m.use(mods[names[0]]):
            for name in names[1:]:
                m.ensure(mods[name])
            # everything this step needs is on the device, whole
            assert all(m.entry(mods[n]).state == "resident" for n in names), m.resident()
            assert m.device.allocated <= 12 * GiB

    for name in ("clip_l", "clip_g", "refiner_clip_g"):
        step(name)
    for _ in range(3):  # base sampling steps, the ControlNet brought in inside each
        step("base", "controlnet")
    assert list(m.evicted) == []  # text encoders, base and ControlNet: 9.92 GiB, under 12 less the reserve
    step("refiner")
    assert list(m.evicted) == ["clip_l", "clip_g", "refiner_clip_g", "base"]  # the least recently used first
    step("vae")
    assert m.device.peak <= 12 * GiB
    assert m.device.peak == sizes["clip_l"] + sizes["clip_g"] + sizes["refiner_clip_g"] + sizes["base"] + \
        sizes["controlnet"] + m.reserve


def test_sdxl_base_alone_under_4_gib_is_loaded_in_part():
    base = _sdxl_modules()["base"]
    m = manager(4 * GiB, reserve=None, BASE=base)
    with m.use(base):
        e = m.entry(base)
        assert e.state == "partial" and 0 < e.resident_bytes < 4 * GiB - m.reserve
    assert m.device.peak <= 4 * GiB

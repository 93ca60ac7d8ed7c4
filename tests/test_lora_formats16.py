"""Issue 16's LoRA formats and hypernetworks.

Each adapter kind's new weight equals its formula, written here independently of
lora_algos.py (loops, explicit permutations, Kronecker blocks); then the tiny SD1 checkpoint
with one tiny file per format through LoraLoader / LoraLoaderModelOnly / HypernetworkLoader,
sampled, against ComfyUI 0.3.64: tests/fixtures/comfy_reference/lora_formats/ holds the files,
the API prompt ComfyUI ran (prompt.json) and its latents (README.md there)."""

from __future__ import annotations

import json
import shutil
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import load_file, save_file

from latentgraph.graph import Environment, Executor
from latentgraph.models.checkpoint import detect_architecture, load_checkpoint, read_state_dict
from latentgraph.models.families import METADATA_KEY
from latentgraph.models.hypernetwork import (HypernetworkError, HypernetworkPatch, build_hypernetwork,
                                             read_hypernetwork)
from latentgraph.models.lora import LoraError, LowRank, load_lora, match_lora
from latentgraph.models.lora_algos import BOFT, GLoRA, OFT, LoHa, LoKr, SetWeight
from latentgraph.models.lora_make import VARIANTS, make_lora
from latentgraph.nodes import create_registry
from conftest import FIXTURES

REF = FIXTURES / "comfy_reference"
HERE = REF / "lora_formats"
PROMPT = json.loads((HERE / "prompt.json").read_text())
LATENTS = load_file(HERE / "latents.safetensors")
TINY = {"unet_num_heads": 8, "text_num_heads": 2}


def rnd(*shape: int, seed: int, std: float = 0.3) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std


W = rnd(8, 6, seed=0, std=1.0)  # a Linear's weight (out 8, in 6)
CONV = rnd(8, 6, 3, 3, seed=1, std=1.0)  # a 3x3 conv's


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5), (a - b).abs().max()


# -- each kind against its formula -------------------------------------------------------------
def test_loha_is_the_hadamard_product_of_two_low_rank_products():
    w1a, w1b, w2a, w2b = rnd(8, 2, seed=2), rnd(2, 6, seed=3), rnd(8, 2, seed=4), rnd(2, 6, seed=5)
    loha = LoHa("k", 4.0, None, w1a, w1b, w2a, w2b)
    assert loha.fits(W.shape) and not loha.fits(torch.Size((6, 8)))
    close(loha.apply(W, 0.5), W + 0.5 * (4.0 / 2) * ((w1a @ w1b) * (w2a @ w2b)))
    close(LoHa("k", None, None, w1a, w1b, w2a, w2b).apply(W, 1.0), W + (w1a @ w1b) * (w2a @ w2b))


def test_loha_tucker_cores_for_a_conv():
    t1, t2 = rnd(2, 2, 3, 3, seed=6), rnd(2, 2, 3, 3, seed=7)
    w1a, w1b, w2a, w2b = rnd(2, 8, seed=8), rnd(2, 6, seed=9), rnd(2, 8, seed=10), rnd(2, 6, seed=11)
    loha = LoHa("k", 1.0, None, w1a, w1b, w2a, w2b, t1, t2)
    assert loha.fits(CONV.shape)
    want = CONV.clone()
    for h in range(3):
        for w in range(3):  # each kernel tap: a^T t[:, :, h, w] b
            m1 = w1a.T @ t1[:, :, h, w] @ w1b
            m2 = w2a.T @ t2[:, :, h, w] @ w2b
            want[:, :, h, w] += 0.7 * (1.0 / 2) * m1 * m2
    close(loha.apply(CONV, 0.7), want)


def kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The Kronecker product block by block: block (i, j) is a[i, j] * b."""
    rows = [torch.cat([a[i, j] * b for j in range(a.shape[1])], dim=1) for i in range(a.shape[0])]
    return torch.cat(rows, dim=0)


def test_lokr_is_a_kronecker_product_scaled_by_the_pair_rank():
    w1, w2a, w2b = rnd(2, 3, seed=12), rnd(4, 3, seed=13), rnd(3, 2, seed=14)
    lokr = LoKr("k", 6.0, None, w1=w1, w2a=w2a, w2b=w2b)
    assert lokr.fits(W.shape) and not lokr.fits(torch.Size((8, 7)))
    close(lokr.apply(W, 0.5), W + 0.5 * (6.0 / 3) * kron(w1, w2a @ w2b))
    # both factors whole: no rank, so alpha does not scale
    w2 = w2a @ w2b
    close(LoKr("k", 6.0, None, w1=w1, w2=w2).apply(W, 1.0), W + kron(w1, w2))


def test_lokr_tucker_core_on_a_conv_is_applied():
    """ComfyUI 0.3.64 on torch 2.14 skips these weights (kron of a strided tensor fails there)."""
    w1, t2, w2a, w2b = rnd(2, 2, seed=15), rnd(2, 2, 3, 3, seed=16), rnd(2, 4, seed=17), rnd(2, 3, seed=18)
    lokr = LoKr("k", 2.0, None, w1=w1, w2a=w2a, w2b=w2b, t2=t2)
    assert lokr.fits(CONV.shape)
    want = CONV.clone()
    for h in range(3):
        for w in range(3):
            want[:, :, h, w] += (2.0 / 2) * kron(w1, w2a.T @ t2[:, :, h, w] @ w2b)
    close(lokr.apply(CONV, 1.0), want)


@pytest.mark.parametrize("axis", ["out", "in"])
@pytest.mark.parametrize("strength", [1.0, 0.4])
def test_dora_renormalises_as_comfyui(axis, strength):
    up, down = rnd(8, 2, seed=19), rnd(2, 6, seed=20)
    magnitude = rnd(8, 1, seed=21).abs() + 1 if axis == "out" else rnd(1, 6, seed=21).abs() + 1
    new = LowRank(up, down, alpha=1.0, dora=magnitude).apply(W, strength)
    adapted = W + 0.5 * (up @ down)
    if axis == "out":  # ComfyUI takes this norm of the weight before the delta
        norm = torch.stack([W[i].norm() for i in range(8)])[:, None]
    else:  # and this one after it
        norm = torch.stack([adapted[:, j].norm() for j in range(6)])[None, :]
    full = adapted * magnitude / (norm + torch.finfo(torch.float32).eps)
    close(new, W + strength * (full - W))
    assert not LowRank(up, down, dora=rnd(3, 1, seed=1)).fits(W.shape)


def cayley(blocks: torch.Tensor, alpha: float) -> torch.Tensor:
    q = blocks - blocks.transpose(-1, -2)
    if alpha > 0 and q.norm() + 1e-8 > alpha:
        q = q * alpha / (q.norm() + 1e-8)
    eye = torch.eye(blocks.shape[-1])
    return torch.linalg.solve((eye - q).transpose(-1, -2), (eye + q).transpose(-1, -2)).transpose(-1, -2)


@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_oft_turns_output_rows_in_blocks(alpha):
    blocks = rnd(2, 4, 4, seed=22)
    r = cayley(blocks, alpha)
    assert torch.allclose(r[0] @ r[0].T, torch.eye(4), atol=1e-5)  # orthogonal
    want = torch.cat([W[4 * k:4 * k + 4] + 0.6 * 0.6 * (r[k] - torch.eye(4)).T @ W[4 * k:4 * k + 4] for k in range(2)])
    oft = OFT("k", alpha, None, blocks)
    close(oft.apply(W, 0.6), want)  # ComfyUI applies the strength twice
    full = oft.apply(W, 1.0)  # at strength 1 a pure rotation: every block's column norms stay
    for k in range(2):
        close(full[4 * k:4 * k + 4].norm(dim=0), W[4 * k:4 * k + 4].norm(dim=0))
    assert not oft.fits(torch.Size((12, 6)))


def test_boft_one_stage_is_a_permuted_block_rotation():
    blocks = rnd(1, 2, 4, 4, seed=23)
    r = cayley(blocks[0], 0.5)
    # stage 0 pairs row i with row i + 2 inside each group of 4: rows (0, 2, 1, 3) make a block
    order = [0, 2, 1, 3, 4, 6, 5, 7]
    perm = torch.eye(8)[order]
    rescale = 1 + rnd(8, 1, seed=24)
    want = (perm.T @ torch.block_diag(r[0], r[1]) @ perm @ W) * rescale
    close(BOFT("k", 0.5, None, blocks, rescale).apply(W, 1.0), want)
    # strength s: each stage is s R + (1 - s) I, and the delta is scaled by s again
    mixed = 0.3 * torch.block_diag(r[0], r[1]) + 0.7 * torch.eye(8)
    close(BOFT("k", 0.5, None, blocks).apply(W, 0.3), W + 0.3 * (perm.T @ mixed @ perm @ W - W))
    assert BOFT("k", 0.5, None, rnd(2, 2, 4, 4, seed=1)).fits(W.shape)  # 2 stages: rows 2 apart, then 4 apart
    assert not BOFT("k", 0.5, None, rnd(3, 2, 4, 4, seed=1)).fits(W.shape)  # a third stage needs 16 rows
    assert not BOFT("k", 0.5, None, rnd(1, 3, 4, 4, seed=1)).fits(W.shape)  # 3 blocks of 4 rows are not 8


def test_glora_both_layouts():
    a1, a2, b1, b2 = rnd(6, 2, seed=25), rnd(2, 6, seed=26), rnd(8, 2, seed=27), rnd(2, 6, seed=28)
    new = GLoRA("k", 1.0, None, a1, a2, b1, b2)
    assert new.layout(W.shape) == (False, 2)
    close(new.apply(W, 0.5), W + 0.5 * 0.5 * (W @ a1 @ a2 + b1 @ b2))
    # LyCORIS' old layout: W @ a2 @ a1 + b2 @ b1, with a1 (r, in), a2 (in, r), b1 (r, in), b2 (out, r)
    old = GLoRA("k", None, None, a2, a1, rnd(2, 6, seed=29), rnd(8, 2, seed=30))
    assert old.layout(W.shape) == (True, 2)
    close(old.apply(W, 1.0), W + old.b2 @ old.b1 + W @ old.a2 @ old.a1)
    conv = GLoRA("k", None, None, a1, a2, b1, rnd(2, 54, seed=31))
    want = CONV + torch.einsum("oihw,ij,jk->okhw", CONV, a1, a2) + (b1 @ conv.b2).reshape(CONV.shape)
    close(conv.apply(CONV, 1.0), want)


def test_set_weight_replaces_the_weight():
    value = rnd(8, 6, seed=32)
    assert torch.equal(SetWeight("k", None, None, value).apply(W, 0.3), value)


# -- through the key matcher ---------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    return load_checkpoint(REF / "tiny_sd15.safetensors", overrides=TINY)


Q = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"  # (32, 32)


def test_misfit_adapters_are_errors_naming_keys_and_shapes(tiny):
    sd = {f"{Q}.hada_w1_a": rnd(16, 2, seed=1), f"{Q}.hada_w1_b": rnd(2, 32, seed=2),
          f"{Q}.hada_w2_a": rnd(16, 2, seed=3), f"{Q}.hada_w2_b": rnd(2, 32, seed=4),
          f"{Q.replace('to_q', 'to_k')}.oft_blocks": rnd(3, 4, 4, seed=5)}
    with pytest.raises(LoraError) as info:
        match_lora(sd, "sd15", tiny.unet, tiny.text, "x.safetensors")
    assert str(info.value).splitlines() == [
        "x.safetensors does not fit this Stable Diffusion 1.x model (a LoRA for another model?):",
        f"  {Q}.hada_w1_a (16, 2), {Q}.hada_w1_b (2, 32), {Q}.hada_w2_a (16, 2), {Q}.hada_w2_b (2, 32): does not fit "
        "unet input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight of shape (32, 32)",
        f"  {Q.replace('to_q', 'to_k')}.oft_blocks (3, 4, 4): does not fit "
        "unet input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight of shape (32, 32)"]


def test_two_kinds_on_one_weight_are_refused(tiny):
    sd = {f"{Q}.lora_up.weight": rnd(32, 2, seed=1), f"{Q}.lora_down.weight": rnd(2, 32, seed=2),
          f"{Q}.lokr_w1": rnd(4, 4, seed=3), f"{Q}.lokr_w2": rnd(8, 8, seed=4)}
    with pytest.raises(LoraError, match="more than one delta for the same weight"):
        match_lora(sd, "sd15", tiny.unet, tiny.text)


@pytest.mark.parametrize("variant", VARIANTS)
def test_made_files_apply_whole(tiny, tmp_path, variant):
    """make_lora's layouts are what the matcher reads: every key applies, no warning."""
    sd = make_lora(tiny.unet, tiny.text["l"], variant, seed=3, rank=2)
    path = tmp_path / f"{variant}.safetensors"
    save_file(sd, str(path))
    loaded = load_lora(path, "sd15", tiny.unet, tiny.text)
    assert loaded.warning is None and loaded.harmless == []
    committed = load_file(HERE / f"lg16_{variant}.safetensors")  # the fixture is the same layout at rank 4
    assert sorted(committed) == sorted(sd)


# -- parity with ComfyUI ---------------------------------------------------------------------
FAST = ["lora", "loha", "lokr", "dora", "oft", "boft", "glora", "stack_loha_dora_oft", "hn_relu", "hn_tanh_ln"]
SLOW = ["base", "locon", "oft_full", "boft_full", "model_only_loha", "hn_after_lora"]


def _env(root):
    for kind in ("checkpoints", "loras", "hypernetworks"):
        (root / "models" / kind).mkdir(parents=True)
    sd, meta = read_state_dict(REF / "tiny_sd15.safetensors")
    arch = detect_architecture(sd, meta, "tiny_sd15", TINY)
    save_file(sd, str(root / "models" / "checkpoints" / "tiny_sd15.safetensors"),
              metadata={METADATA_KEY: arch.to_json()})
    for f in HERE.glob("lg16_*.safetensors"):
        shutil.copy(f, root / "models" / "loras" / f.name)
    for f in HERE.glob("lg16_*.pt"):
        shutil.copy(f, root / "models" / "hypernetworks" / f.name)
    return Environment(output_dir=root / "out", input_dir=root / "in", temp_dir=root / "tmp",
                       models_dir=root / "models", device="cpu")


def _registry():
    return create_registry()


def run_prompt(root, runs: list[str]) -> dict:
    """ComfyUI's prompt with CheckpointLoaderSimple for the oracle-only loader, run to the
    KSamplers of ``runs``."""
    prompt = {}
    for nid, n in PROMPT.items():
        if n["class_type"] == "TinyCheckpointLoader":
            prompt[nid] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": n["inputs"]["ckpt_name"]}}
        elif n["class_type"] != "SaveLatent":
            prompt[nid] = n
    result = Executor(_registry(), _env(root)).run(prompt, targets=[f"{r}_k" for r in runs])
    assert result.outputs == {}  # every file applies whole: no node warns
    return {r: result.get(f"{r}_k")["samples"] for r in runs}


def assert_parity(name: str, out: torch.Tensor) -> None:
    ref = LATENTS[name]
    err = (out - ref).abs().max().item() / ref.abs().max().item()
    assert err < 1e-4, f"{name}: relative error {err:.3g}"
    if name != "base":  # and the file really changed the picture (by 100x the tolerance at least)
        assert (ref - LATENTS["base"]).abs().max() > 1e-2 * LATENTS["base"].abs().max()


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory):
    return run_prompt(tmp_path_factory.mktemp("lora16"), FAST)


@pytest.mark.parametrize("name", FAST)
def test_lora_formats_sample_as_comfyui(fast_runs, name):
    assert_parity(name, fast_runs[name])


@pytest.mark.slow
def test_more_lora_runs_sample_as_comfyui(tmp_path):
    for name, out in run_prompt(tmp_path, SLOW).items():
        assert_parity(name, out)


def test_prompt_covers_every_variant():
    loras = {n["inputs"]["lora_name"] for n in PROMPT.values() if "lora_name" in n["inputs"]}
    assert loras == {f"lg16_{v}.safetensors" for v in VARIANTS}
    assert set(LATENTS) == set(FAST) | set(SLOW)


# -- hypernetworks ---------------------------------------------------------------------------
def test_hypernetwork_patch_formula():
    raw = torch.load(HERE / "lg16_hn_relu.pt", weights_only=True)
    net = build_hypernetwork(read_hypernetwork(HERE / "lg16_hn_relu.pt"), "hn")
    assert sorted(net.mlps) == [32, 64] and net.settings["activation_func"] == "relu"
    x = rnd(2, 5, 64, seed=40)

    def mlp(sd, t):  # relu between the Linears, none after the last (activate_output is off)
        h = torch.relu(t @ sd["linear.0.weight"].T + sd["linear.0.bias"])
        return h @ sd["linear.2.weight"].T + sd["linear.2.bias"]

    q, k, v = HypernetworkPatch(net, 0.8)(x, x, x + 1, {})
    assert q is x
    close(k, x + 0.8 * mlp(raw[64][0], x))
    close(v, x + 1 + 0.8 * mlp(raw[64][1], x + 1))
    other = rnd(1, 3, 48, seed=41)  # a width it has no MLPs for
    assert HypernetworkPatch(net, 1.0)(other, other, other, {})[1] is other


def test_hypernetwork_safetensors_version_equals_the_pickle(tmp_path):
    raw = torch.load(HERE / "lg16_hn_tanh_ln.pt", weights_only=True)
    tensors = {f"{w}.{i}.{name}": t for w in (32, 64) for i in (0, 1) for name, t in raw[w][i].items()}
    path = tmp_path / "hn.safetensors"
    save_file(tensors, str(path), metadata={"activation_func": "tanh", "is_layer_norm": "true"})
    a = build_hypernetwork(read_hypernetwork(path), "st")
    b = build_hypernetwork(read_hypernetwork(HERE / "lg16_hn_tanh_ln.pt"), "pt")
    x = rnd(1, 4, 32, seed=42)
    close(HypernetworkPatch(a, 1.0)(x, x, x, {})[1], HypernetworkPatch(b, 1.0)(x, x, x, {})[1])
    assert [type(m).__name__ for m in a.mlps[32][0]] == ["Linear", "Tanh", "LayerNorm", "Linear", "Tanh", "LayerNorm"]


class Payload:
    """Something a weights-only unpickler will not build."""


def test_hypernetwork_files_that_are_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({32: [OrderedDict(), OrderedDict()], "activation_func": Payload()}, evil)
    with pytest.raises(HypernetworkError, match=r"evil.pt: refused: the file needs Python objects"):
        read_hypernetwork(evil)
    raw = torch.load(HERE / "lg16_hn_relu.pt", weights_only=True)
    with pytest.raises(HypernetworkError) as info:
        build_hypernetwork({**raw, "activation_func": "gelu"}, "hn.pt")
    assert str(info.value) == ("hn.pt: activation_func 'gelu' is not one of linear, relu, leakyrelu, elu, swish, "
                               "tanh, sigmoid, softsign, mish")
    bad = {32: [raw[32][0], {"linear.0.weight": torch.zeros(64, 31), "linear.0.bias": torch.zeros(64)}]}
    with pytest.raises(HypernetworkError, match=r"hn.pt: width 32, v: layer linear.0 has weight \(64, 31\)"):
        build_hypernetwork(bad, "hn.pt")
    with pytest.raises(HypernetworkError, match="holds no MLPs"):
        build_hypernetwork({"activation_func": "relu"}, "hn.pt")
    with pytest.raises(HypernetworkError, match="no such file"):
        read_hypernetwork(tmp_path / "missing.pt")


def hn_file(path, widths: tuple[int, ...], seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)

    def mlp(w):
        return OrderedDict([("linear.0.weight", torch.randn(w, w, generator=g) * 0.1),
                            ("linear.0.bias", torch.zeros(w)),
                            ("linear.2.weight", torch.randn(w, w, generator=g) * 0.1),
                            ("linear.2.bias", torch.zeros(w))])

    torch.save({**{w: [mlp(w), mlp(w)] for w in widths}, "activation_func": "relu"}, path)


def test_hypernetwork_node_warns_about_unused_widths_and_refuses_a_stranger(tmp_path):
    env = _env(tmp_path)
    folder = tmp_path / "models" / "hypernetworks"
    hn_file(folder / "partly.pt", (32, 320))
    hn_file(folder / "stranger.pt", (320, 768))
    prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
              "hn": {"class_type": "HypernetworkLoader",
                     "inputs": {"model": ["ckpt", 0], "hypernetwork_name": "partly.pt", "strength": 1.0}}}
    ex = Executor(_registry(), env)
    result = ex.run(prompt, targets=["hn"])
    assert result.outputs == {"hn": {"warnings": [
        "partly.pt: MLPs for widths 320 match no attention of this model (its widths: 32, 64) and are not used; "
        "those for 32 are"]}}
    model = result.get("hn")
    patches = model.model_options["transformer_options"]["patches"]
    assert [type(p).__name__ for p in patches["attn1_patch"] + patches["attn2_patch"]] == ["HypernetworkPatch"] * 2
    prompt["hn"]["inputs"]["hypernetwork_name"] = "stranger.pt"
    from latentgraph.graph.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError) as info:
        ex.run(prompt, targets=["hn"])
    assert info.value.exception_message == (
        "stranger.pt: its MLPs are for attention widths 320, 768, but this model's attentions take 32, 64: "
        "a hypernetwork for another model?")


@pytest.mark.parametrize("variant", ["loha", "dora"])
def test_sdxl_files_reach_both_text_encoders(tmp_path, variant):
    from latentgraph.models.lora_make import make_lora_file
    from latentgraph.models.make import make_checkpoint

    make_checkpoint(tmp_path / "xl.safetensors", "sdxl", "tiny", seed=5)
    ck = load_checkpoint(tmp_path / "xl.safetensors")
    count = make_lora_file(tmp_path / "x.safetensors", "sdxl", "tiny", 5, variant, rank=2)
    assert count == len(load_file(tmp_path / "x.safetensors"))
    loaded = load_lora(tmp_path / "x.safetensors", "sdxl", ck.unet, ck.text, 1.0, 0.5)
    assert loaded.warning is None and loaded.harmless == []
    for name in ("l", "g"):
        before, after = dict(ck.text[name].named_parameters()), dict(loaded.text[name].named_parameters())
        changed = [k for k in after if not torch.equal(after[k], before[k])]
        # q, k, v, out, fc1, fc2 of every layer; nothing else
        assert len(changed) == 6 * ck.arch.text[name].num_layers, name


def test_lora_nodes_at_strength_zero_pass_the_inputs_through(tmp_path):
    """As ComfyUI: both strengths 0 is the LoRA switched off; the file is not read at all."""
    env = _env(tmp_path)
    (tmp_path / "models" / "loras" / "broken.safetensors").write_bytes(b"not a LoRA")
    prompt = {"ckpt": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
              "off": {"class_type": "LoraLoader", "inputs": {"model": ["ckpt", 0], "clip": ["ckpt", 1],
                                                             "lora_name": "broken.safetensors", "strength_model": 0.0,
                                                             "strength_clip": 0.0}},
              "only": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["ckpt", 0],
                                                                       "lora_name": "broken.safetensors",
                                                                       "strength_model": 0.0}}}
    result = Executor(_registry(), env).run(prompt, targets=["ckpt", "off", "only"])
    assert result.get("off", 0) is result.get("ckpt", 0) and result.get("off", 1) is result.get("ckpt", 1)
    assert result.get("only") is result.get("ckpt", 0)
    prompt["off"]["inputs"]["strength_clip"] = 0.5
    from latentgraph.graph.errors import NodeExecutionError

    with pytest.raises(NodeExecutionError, match="broken.safetensors: not a readable safetensors file"):
        Executor(_registry(), env).run(prompt, targets=["off"])


# -- the command line ----------------------------------------------------------------------
def test_make_checkpoint_writes_loras_and_hypernetworks(tmp_path, capsys):
    from latentgraph.cli import main as cli_main
    from latentgraph.models.make import make_checkpoint

    base = ["make-checkpoint", "--family", "sd15", "--seed", "3"]
    assert cli_main([*base, str(tmp_path / "l.safetensors"), "--kind", "lora", "--variant", "dora", "--rank", "2"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'l.safetensors'}: sd15 dora LoRA (")
    make_checkpoint(tmp_path / "c.safetensors", "sd15", "tiny", seed=3)
    ck = load_checkpoint(tmp_path / "c.safetensors")
    loaded = load_lora(tmp_path / "l.safetensors", "sd15", ck.unet, ck.text)
    assert loaded.warning is None and loaded.harmless == []
    # a tiny file fits the tiny checkpoint of the same seed: its DoRA magnitudes are near that file's norms
    sd = load_file(tmp_path / "l.safetensors")
    name = "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    norms = dict(ck.unet.named_parameters())["input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"].norm(dim=1)
    assert torch.allclose(sd[f"{name}.dora_scale"].flatten(), norms, rtol=0.5)
    assert cli_main([*base, str(tmp_path / "h.pt"), "--kind", "hypernetwork"]) == 0
    assert "sd15 hypernetwork for attention widths 32, 64 (tiny, fp32)" in capsys.readouterr().out
    assert sorted(build_hypernetwork(read_hypernetwork(tmp_path / "h.pt"), "h").mlps) == [32, 64]
    for extra, message in ((["--kind", "hypernetwork", "--rank", "2"], "--rank is for --kind control_lora or lora"),
                           (["--kind", "lora", "--variant", "vit-l"], "--variant vit-l is not a LoRA variant; "
                                                                      "--kind lora takes lora, locon, loha, lokr, "
                                                                      "dora, oft, boft, glora")):
        assert cli_main([*base, str(tmp_path / "x.safetensors"), *extra]) != 0
        assert capsys.readouterr().err.strip() == f"latentgraph make-checkpoint: {message}"


PARTLY_WARNING = (
    "1 of the 394 keys of partly.safetensors were not applied (format detected: LoRA on 132 modules; kohya names); "
    "the rest of it is. Keys not applied, grouped:\n  names no module of this Stable Diffusion 1.x model: "
    "lora_unet_input_blocks_* (1 module, 1 key: .lora_up.weight)")


def partly_flow(root) -> dict:
    """The tiny model, a LoRA of which one key names a block it lacks (LoraLoaderModelOnly, node
    10), one sampling step, SaveLatent. 393 keys on 131 modules of the fixture (the text
    encoder's change nothing in a model-only load) + the stray one."""
    env = _env(root)
    partly = load_file(HERE / "lg16_lora.safetensors")
    partly["lora_unet_input_blocks_7_1_proj_in.lora_up.weight"] = torch.zeros(4, 4)
    save_file(partly, str(root / "models" / "loras" / "partly.safetensors"))
    return env, {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd15.safetensors"}},
            "10": {"class_type": "LoraLoaderModelOnly", "inputs": {"model": ["1", 0], "lora_name": "partly.safetensors",
                                                                   "strength_model": 1.0}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a"}},
            "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "4": {"class_type": "KSampler", "inputs": {"model": ["10", 0], "positive": ["2", 0], "negative": ["2", 0],
                                                       "latent_image": ["3", 0], "seed": 1, "steps": 1, "cfg": 1.0,
                                                       "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
            "5": {"class_type": "SaveLatent", "inputs": {"samples": ["4", 0], "filename_prefix": "w"}}}


def test_run_prints_node_warnings(tmp_path, capsys):
    from latentgraph.cli import main as cli_main

    _, flow = partly_flow(tmp_path)
    (tmp_path / "flow.json").write_text(json.dumps(flow))
    assert cli_main(["run", str(tmp_path / "flow.json"), "--models-dir", str(tmp_path / "models"),
                     "--output-dir", str(tmp_path / "out"), "--device", "cpu", "--no-progress"]) == 0
    assert capsys.readouterr().err == f"warning: LoraLoaderModelOnly (node 10): {PARTLY_WARNING}\n"


def test_the_server_sends_node_warnings_and_keeps_them_in_the_history(tmp_path):
    import asyncio

    from aiohttp import WSMsgType
    from aiohttp.test_utils import TestClient, TestServer

    from latentgraph.nodes import create_services
    from latentgraph.server.app import create_app

    env, flow = partly_flow(tmp_path)
    app = create_app(_registry(), env, services=create_services(env), user_dir=tmp_path / "user", frontend="none")

    async def go():
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            ws = await client.ws_connect("/ws?clientId=k")
            await ws.receive_json(timeout=10)  # status
            pid = (await (await client.post("/prompt", json={"prompt": flow, "client_id": "k"})).json())["prompt_id"]
            executed = []
            while True:
                raw = await ws.receive(timeout=60)
                if raw.type != WSMsgType.TEXT:  # preview frames
                    continue
                msg = json.loads(raw.data)
                if msg["type"] == "executed":
                    executed.append(msg["data"])
                if msg["type"] == "executing" and msg["data"]["node"] is None:
                    break
            history = await (await client.get(f"/history/{pid}")).json()
            return executed, history[pid]["outputs"]

    executed, outputs = asyncio.run(asyncio.wait_for(go(), 120))
    assert [(e["node"], e["output"]) for e in executed if e["node"] == "10"] == [("10", {"warnings": [PARTLY_WARNING]})]
    assert outputs["10"] == {"warnings": [PARTLY_WARNING]} and "latents" in outputs["5"]


def test_ui_widgets_map_onto_the_loader_inputs():
    """What ComfyUI's frontend saves in a UI workflow for these nodes (widgets_values in input
    order) lands on the right inputs."""
    from latentgraph.graph.ui_format import map_widgets

    reg = create_registry()
    assert map_widgets(reg["HypernetworkLoader"], ["lg16_hn_relu.pt", 0.8]) == {
        "hypernetwork_name": "lg16_hn_relu.pt", "strength": 0.8}
    assert map_widgets(reg["LoraLoader"], ["lg16_loha.safetensors", 0.8, 0.6]) == {
        "lora_name": "lg16_loha.safetensors", "strength_model": 0.8, "strength_clip": 0.6}
    assert map_widgets(reg["LoraLoaderModelOnly"], ["lg16_loha.safetensors", 0.7]) == {
        "lora_name": "lg16_loha.safetensors", "strength_model": 0.7}

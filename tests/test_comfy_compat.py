"""ComfyUI's module API for packs (latentgraph.comfy_compat), used the way real packs use it:
packs written here as files in a custom-nodes folder import ``folder_paths``, ``comfy.utils``,
``comfy.model_management``, ``server``, ``nodes``, ``node_helpers`` and
``comfy_execution.graph_utils`` and run through the executor and the server; what they read
and send is checked by value."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from aiohttp.test_utils import TestClient, TestServer

from latentgraph import comfy_compat
from latentgraph.graph import Environment, Executor, Workflow
from latentgraph.graph.errors import Interrupted, NodeExecutionError
from latentgraph.graph.expansion import Blocker
from latentgraph.nodes import create_registry
from latentgraph.plugins import load_plugins
from latentgraph.server import create_app
from test_server import until_done  # the server tests' reader: messages up to the prompt's end

PACK = '''
import os

import torch
from aiohttp import web

import comfy.model_management
import comfy.utils
import folder_paths
import node_helpers
import nodes
from comfy_execution.graph import ExecutionBlocker
from comfy_execution.graph_utils import GraphBuilder
from server import PromptServer

# as IPAdapter_plus does at import: a model folder of its own under models/
folder_paths.folder_names_and_paths["ipadapter"] = (
    [os.path.join(folder_paths.models_dir, "ipadapter")], folder_paths.supported_pt_extensions)
SEEN_AT_IMPORT = folder_paths.get_filename_list("checkpoints")


@PromptServer.instance.routes.get("/compat_pack/models")
async def list_models(request):
    return web.json_response({"ipadapter": folder_paths.get_filename_list("ipadapter")})


class PickLora:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"lora_name": (folder_paths.get_filename_list("loras"),)}}

    RETURN_TYPES = ("STRING", "STRING")
    FUNCTION = "pick"
    CATEGORY = "compat"

    def pick(self, lora_name):
        return (folder_paths.get_full_path("loras", lora_name), str(comfy.model_management.get_torch_device()))


class CountSteps:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"steps": ("INT", {"default": 3, "min": 1, "max": 100})},
                "hidden": {"unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "count"
    CATEGORY = "compat"
    OUTPUT_NODE = True

    def count(self, steps, unique_id):
        bar = comfy.utils.ProgressBar(steps)
        for i in range(steps):
            comfy.model_management.throw_exception_if_processing_interrupted()
            bar.update(1)
        running = PromptServer.instance.prompt_queue.currently_running  # ComfyUI's 6-element entries
        PromptServer.instance.send_sync("compat_pack.counted", {
            "node": unique_id, "steps": steps, "client": PromptServer.instance.client_id,
            "running": [[entry[1], sorted(entry[2]), entry[4]] for entry in running.values()]})
        PromptServer.instance.send_progress_text(f"counted {steps}", unique_id)
        return (steps,)


class BlankLatent:
    """Reuses ComfyUI's core node as packs do: nodes.EmptyLatentImage().generate(w, h, batch)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"size": ("INT", {"default": 64, "min": 8, "max": nodes.MAX_RESOLUTION})}}

    RETURN_TYPES = ("LATENT", "INT")
    FUNCTION = "make"

    def make(self, size):
        latent = nodes.NODE_CLASS_MAPPINGS["EmptyLatentImage"]().generate(size, size, 2)[0]
        scaled = comfy.utils.common_upscale(latent["samples"], size // 4, size // 4, "nearest-exact", "disabled")
        return ({"samples": scaled}, nodes.MAX_RESOLUTION)


class AddOne:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -10000, "max": 10000})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "add"

    def add(self, value):
        return (value + 1,)


class AddTimes:
    """Expands into a chain of AddOne nodes made with GraphBuilder (the way loop packs do)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0, "min": -10000, "max": 10000}),
                             "times": ("INT", {"default": 3, "min": 0, "max": 50})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "expand"

    def expand(self, value, times):
        if times == 0:
            return (value,)
        graph = GraphBuilder()
        current = value
        for _ in range(times):
            current = graph.node("CompatAddOne", value=current).out(0)
        return {"result": (current,), "expand": graph.finalize()}


class Gate:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 0}), "open": ("BOOLEAN", {"default": True})}}

    RETURN_TYPES = ("INT",)
    FUNCTION = "gate"

    def gate(self, value, open):
        return (value if open else ExecutionBlocker(None),)


class Strength:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"conditioning": ("CONDITIONING",), "strength": ("FLOAT", {"default": 1.0})}}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "set"

    def set(self, conditioning, strength):
        return (node_helpers.conditioning_set_values(conditioning, {"strength": strength}),)


NODE_CLASS_MAPPINGS = {"CompatPickLora": PickLora, "CompatCountSteps": CountSteps, "CompatBlank": BlankLatent,
                       "CompatAddOne": AddOne, "CompatAddTimes": AddTimes, "CompatGate": Gate,
                       "CompatStrength": Strength}
'''


def _touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A models folder, a pack folder, and the registry with the pack loaded against them."""
    root = tmp_path_factory.mktemp("compat")
    models = root / "models"
    for name in ("checkpoints/base.safetensors", "loras/b.safetensors", "loras/sub/a.ckpt", "loras/notes.txt",
                 "ipadapter/plus.safetensors", "ipadapter/.git/x.safetensors"):
        _touch(models / name)
    (root / "custom_nodes" / "compat_pack").mkdir(parents=True)
    (root / "custom_nodes" / "compat_pack" / "__init__.py").write_text(PACK)
    env = Environment(output_dir=root / "output", input_dir=root / "input", temp_dir=root / "temp",
                      models_dir=models, device="cpu")
    registry = create_registry()
    (info,) = load_plugins(registry, [root / "custom_nodes"], entry_points=False, env=env)
    assert (info.status, info.error) == ("loaded", None)
    return root, env, registry, info


def _run(executor, prompt, events=None, targets=None):
    listener = events if callable(events) else (lambda kind, data: events.append((kind, data))) \
        if events is not None else None
    return executor.run(Workflow.from_api(prompt), listener=listener, targets=targets or list(prompt))


def test_the_pack_loads_against_the_layer_and_sees_the_model_folders(site):
    root, env, registry, info = site
    assert info.kind == "comfyui" and info.missing == []
    assert info.nodes == ["CompatPickLora", "CompatCountSteps", "CompatBlank", "CompatAddOne", "CompatAddTimes",
                          "CompatGate", "CompatStrength"]
    pack = sys.modules["latentgraph_custom_nodes.compat_pack"]
    assert pack.SEEN_AT_IMPORT == ["base.safetensors", "latentgraph-shapes.safetensors"]  # + the shipped demo
    # ComfyUI's rules: sorted relative POSIX paths, recursive, filtered by extension
    choices = registry["CompatPickLora"].object_info()["input"]["required"]["lora_name"][0]
    assert choices == ["b.safetensors", "sub/a.ckpt"]
    result = _run(Executor(registry, env), {"p": {"class_type": "CompatPickLora", "inputs": {"lora_name": "sub/a.ckpt"}}})
    assert (result.get("p", 0), result.get("p", 1)) == (str(root / "models" / "loras" / "sub" / "a.ckpt"), "cpu")
    folder_paths = sys.modules["folder_paths"]
    assert folder_paths.get_full_path("loras", "../../b.safetensors") == str(root / "models" / "loras" / "b.safetensors")
    assert folder_paths.get_full_path("loras", "absent.safetensors") is None
    assert folder_paths.get_full_path("no_such_folder", "x") is None
    with pytest.raises(KeyError):
        folder_paths.get_filename_list("no_such_folder")  # as ComfyUI
    assert folder_paths.get_filename_list("ipadapter") == ["plus.safetensors"]  # .git is skipped
    assert folder_paths.get_annotated_filepath("x.png [output]") == str(root / "output" / "x.png")
    assert folder_paths.get_annotated_filepath("x.png") == str(root / "input" / "x.png")


def test_progress_bar_messages_interrupts_and_progress_text(site):
    root, env, registry, info = site
    executor = Executor(registry, env)
    events = []
    result = _run(executor, {"c": {"class_type": "CompatCountSteps", "inputs": {"steps": 4}}}, events)
    assert result.get("c") == 4
    progress = [(d["value"], d["max"], d["node"]) for kind, d in events if kind == "progress"]
    assert progress == [(1, 4, "c"), (2, 4, "c"), (3, 4, "c"), (4, 4, "c")]

    # an interrupt asked for during the run stops the node at its next check
    def stop_at_two(kind, data):
        if kind == "progress" and data["value"] == 2:
            executor.interrupt()

    with pytest.raises(Interrupted):
        _run(executor, {"c": {"class_type": "CompatCountSteps", "inputs": {"steps": 9}}}, stop_at_two)


def test_core_nodes_reused_by_comfyuis_method_names(site):
    root, env, registry, info = site
    result = _run(Executor(registry, env), {"b": {"class_type": "CompatBlank", "inputs": {"size": 64}}})
    latent, biggest = result.get("b", 0), result.get("b", 1)
    assert latent["samples"].shape == (2, 4, 16, 16) and bool((latent["samples"] == 0).all())
    assert biggest == 16384
    nodes = comfy_compat.import_module("nodes")
    assert nodes.VAEEncode.FUNCTION == "encode" and nodes.KSampler.FUNCTION == "sample"
    assert nodes.VAEEncode.RETURN_TYPES == ("LATENT",)
    (image,) = nodes.ImageScale().upscale(torch.ones(1, 4, 4, 3), "nearest-exact", 8, 2, "disabled")
    assert image.shape == (1, 2, 8, 3) and bool((image == 1).all())
    with pytest.raises(TypeError, match=r"VAEEncode.encode\(\) takes 2 arguments \(vae, pixels\), 3 were given"):
        nodes.VAEEncode().encode(1, 2, 3)
    with pytest.raises(TypeError, match="has no parameter 'colour'"):
        nodes.EmptyImage().generate(8, 8, 1, colour=3)


def test_graph_builder_expansion_and_execution_blocker(site):
    root, env, registry, info = site
    executor = Executor(registry, env)
    result = _run(executor, {"t": {"class_type": "CompatAddTimes", "inputs": {"value": 10, "times": 4}}})
    assert result.get("t") == 14
    assert sum(1 for n in result.executed if n != "t") == 4  # the four expanded AddOne nodes
    blocked = _run(executor, {"g": {"class_type": "CompatGate", "inputs": {"value": 1, "open": False}},
                              "t": {"class_type": "CompatAddTimes", "inputs": {"value": ["g", 0], "times": 2}}},
                   targets=["t"])
    # ComfyUI's ExecutionBlocker (the layer's name for latentgraph's Blocker): "t" never expanded
    assert isinstance(blocked.get("t"), Blocker) and blocked.executed == ["g", "t"]


def test_node_helpers_conditioning_set_values():
    cond = [[torch.zeros(1, 2, 4), {"pooled_output": None}], [torch.ones(1, 2, 4), {"strength": 0.5}]]
    helpers = comfy_compat.import_module("node_helpers")
    out = helpers.conditioning_set_values(cond, {"strength": 0.25})
    assert [o[1] for o in out] == [{"pooled_output": None, "strength": 0.25}, {"strength": 0.25}]
    assert cond[1][1] == {"strength": 0.5} and out[0][0] is cond[0][0]  # copies the options, shares the tensors
    appended = helpers.conditioning_set_values([[cond[0][0], {"area": [1]}]], {"area": [2]}, append=True)
    assert appended[0][1] == {"area": [1, 2]}


def test_send_sync_reaches_the_websocket_and_pack_routes_are_served(site):
    root, env, registry, info = site

    async def go():
        app = create_app(registry, env, user_dir=root / "user", frontend="none")
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            for path in ("/compat_pack/models", "/api/compat_pack/models"):
                r = await client.get(path)
                assert r.status == 200 and await r.json() == {"ipadapter": ["plus.safetensors"]}
            ws = await client.ws_connect("/ws?clientId=me")
            await ws.receive_json(timeout=10)
            r = await client.post("/prompt", json={"prompt": {"c": {"class_type": "CompatCountSteps",
                                                                   "inputs": {"steps": 2}}}, "client_id": "me"})
            assert r.status == 200, await r.text()
            texts, frames = await until_done(ws, (await r.json())["prompt_id"])
            await ws.close()
            return texts, frames

    texts, frames = asyncio.run(asyncio.wait_for(go(), 120))
    sent = [t["data"] for t in texts if t["type"] == "compat_pack.counted"]
    pid = next(t["data"]["prompt_id"] for t in texts if t["type"] == "execution_start")
    assert sent == [{"node": "c", "steps": 2, "client": "me", "running": [[pid, ["c"], ["c"]]]}]
    assert [(t["data"]["value"], t["data"]["max"]) for t in texts if t["type"] == "progress"] == [(1, 2), (2, 2)]
    # ComfyUI's progress-text frame: event 3, then the node id's length, the node id, the text
    text_frames = [f for f in frames if f[:4] == (3).to_bytes(4, "big")]
    assert text_frames == [(3).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"c" + b"counted 2"]


def test_layer_names_and_the_boundary():
    assert comfy_compat.provides("comfy.utils.ProgressBar")
    assert comfy_compat.provides("server.PromptServer.instance.send_sync")
    assert comfy_compat.provides("folder_paths.get_filename_list")
    assert not comfy_compat.provides("comfy.utils.no_such_function")
    assert not comfy_compat.provides("comfy_api_nodes.apis")
    assert comfy_compat.missing_names("\0probe") == []  # probing records nothing
    # nothing in latentgraph's core imports the layer
    core = Path(comfy_compat.__file__).parents[1]
    for part in ("graph", "nodes", "models", "sampling"):
        for path in (core / part).rglob("*.py"):
            text = path.read_text(encoding="utf-8")
            assert "comfy_compat" not in text, path


def test_a_missing_name_is_reported_for_the_pack(tmp_path):
    pack = tmp_path / "nodes_dir" / "asks_too_much"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        import comfy.utils
        HOOK = comfy.utils.no_such_helper
        NODE_CLASS_MAPPINGS = {}
    """))
    registry = create_registry()
    (info,) = load_plugins(registry, [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "needs ComfyUI" and info.needs == "comfy.utils.no_such_helper"
    assert info.missing == ["comfy.utils.no_such_helper"]
    assert info.error == "needs comfy.utils.no_such_helper, which latentgraph's ComfyUI compatibility layer does not provide"


def test_a_real_comfyui_beside_us_is_never_shadowed(tmp_path, monkeypatch):
    real = tmp_path / "ComfyUI"
    (real / "comfy").mkdir(parents=True)
    (real / "comfy" / "__init__.py").write_text("")
    (real / "folder_paths.py").write_text("REAL = True\n")
    (real / "execution.py").write_text("")
    monkeypatch.syspath_prepend(str(real))
    assert comfy_compat.real_comfyui() == real
    assert comfy_compat.install() is False


def test_a_pack_that_catches_a_missing_import_and_then_fails_is_told_what_it_needed(tmp_path):
    pack = tmp_path / "nodes_dir" / "catches"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        try:
            from comfy.clip_vision_not_here import load
            LOADED = True
        except ImportError:
            print("could not load the vision part")
        NODE_CLASS_MAPPINGS = {"Uses": Uses}  # NameError: the class lived in the part that failed
    """))
    (info,) = load_plugins(create_registry(), [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "needs ComfyUI" and info.needs == "comfy.clip_vision_not_here"
    assert info.error == ("needs comfy.clip_vision_not_here, which latentgraph's ComfyUI compatibility layer does "
                          "not provide (then NameError: name 'Uses' is not defined (at __init__.py:7))")


def test_comfy_types_execution_extras_and_the_prompt_queue():
    io_types = comfy_compat.import_module("comfy.comfy_types.node_typing").IO
    # ComfyUI's link rule: "*" matches anything, unions match a member, else names must be equal
    assert not (io_types.ANY != "LATENT") and not (io_types.NUMBER != "INT") and not (io_types.PRIMITIVE != "STRING")
    assert io_types.IMAGE != "MASK" and io_types.IMAGE == "IMAGE" and str(io_types.IMAGE) == "IMAGE"
    assert {io_types.INT: 1}["INT"] == 1  # hashes as the string
    lazy = comfy_compat.import_module("comfy.comfy_types").CheckLazyMixin()
    assert lazy.check_lazy_status(a=None, b=1, c=(None,)) == ["a", "c"]
    execution = comfy_compat.import_module("execution")
    assert execution.full_type_name(ValueError) == "ValueError"
    assert execution.full_type_name(Blocker) == "latentgraph.graph.expansion.Blocker"
    with pytest.raises(AttributeError, match="does not provide it"):
        execution.validate_prompt
    upscale = comfy_compat.import_module("comfy_extras.nodes_upscale_model")
    # V3 in ComfyUI 0.3.64; packs written for earlier versions call the V1 name
    assert upscale.ImageUpscaleWithModel.FUNCTION == "upscale"
    mask = comfy_compat.import_module("comfy_extras.nodes_mask")
    (grown,) = mask.GrowMask().expand_mask(torch.zeros(1, 5, 5).index_put_((torch.tensor([0]), torch.tensor([2]),
                                                                           torch.tensor([2])), torch.tensor(1.0)),
                                           1, False)
    assert int(grown.sum()) == 9  # the one pixel grown by one in every direction
    latent = {"samples": torch.ones(1, 4, 8, 8)}
    latents = comfy_compat.import_module("comfy_extras.nodes_latent")
    (old_style,) = latents.LatentBatch().batch(latent, latent)  # ComfyUI 0.3.39's V1 method
    new_style = latents.LatentBatch.execute(latent, latent)  # 0.3.64's V3 classmethod, a NodeOutput
    assert old_style["samples"].shape == (2, 4, 8, 8) and torch.equal(new_style[0]["samples"], old_style["samples"])
    assert torch.equal(new_style.result[0]["samples"], old_style["samples"])
    with pytest.raises(ModuleNotFoundError, match="comfy_extras.nodes_no_such_module"):
        comfy_compat.import_module("comfy_extras.nodes_no_such_module")
    queue = comfy_compat.import_module("server").PromptServer.instance.prompt_queue
    with pytest.raises(AttributeError, match="prompt_queue' has no attribute 'wipe_history'"):
        queue.wipe_history


def test_return_values_are_read_as_comfyui_reads_them(tmp_path):
    """Real packs return more values than they declare (ComfyUI drops them), fewer, or {} (the
    rest reach the next node as None), or a str (indexed like a tuple); an input named in both
    sections stays required."""
    pack = tmp_path / "nodes_dir" / "return_values"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        class Returns:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"x": ("INT", {"default": 2}), "how": (["extra", "short", "empty", "str", "none"],)},
                        "optional": {"x": ("INT", {"default": 9})}}
            RETURN_TYPES = ("INT", "STRING")
            FUNCTION = "run"
            def run(self, x, how):
                return {"extra": (x * 3, "s", "an extra value nothing can link to"), "short": (x * 3,),
                        "empty": {}, "str": "ab", "none": None}[how]
        NODE_CLASS_MAPPINGS = {"Returns": Returns}
    """))
    registry = create_registry()
    (info,) = load_plugins(registry, [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "loaded" and not registry["Returns"].inputs["x"].optional
    executor = Executor(registry, Environment(device="cpu", output_dir=tmp_path / "o"))
    for how, expected in (("extra", (15, "s")), ("short", (15, None)), ("empty", (None, None)), ("str", ("a", "b"))):
        result = _run(executor, {"n": {"class_type": "Returns", "inputs": {"x": 5, "how": how}}})
        assert (result.get("n", 0), result.get("n", 1)) == expected, how
    spec = registry["Returns"].inputs["x"]
    assert (spec.optional, spec.default) == (False, 2)  # the required entry, not the optional one
    # a bare None fails, as in ComfyUI (Impact's CLIPSegDetectorProvider without its CLIPSeg pack)
    with pytest.raises(NodeExecutionError, match="Returns returned None; a ComfyUI node returns a tuple"):
        _run(executor, {"n": {"class_type": "Returns", "inputs": {"x": 5, "how": "none"}}})


def test_hidden_inputs_of_unknown_kinds_are_not_passed_as_comfyui(tmp_path):
    pack = tmp_path / "nodes_dir" / "hidden_kinds"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        class Versioned:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"x": ("INT", {"default": 2})},
                        "hidden": {"ttNnodeVersion": "1.2.0", "token": "AUTH_TOKEN_COMFY_ORG", "me": "UNIQUE_ID"}}
            RETURN_TYPES = ("STRING",)
            FUNCTION = "run"
            def run(self, x, token, me):  # as tinyterra's: no parameter for its version tag
                return (f"{x} {token} {me}",)
        NODE_CLASS_MAPPINGS = {"Versioned": Versioned}
    """))
    registry = create_registry()
    (info,) = load_plugins(registry, [tmp_path / "nodes_dir"], entry_points=False)
    assert info.status == "loaded"
    result = _run(Executor(registry, Environment(device="cpu", output_dir=tmp_path / "o")),
                  {"v": {"class_type": "Versioned", "inputs": {"x": 5}}})
    assert result.get("v") == "5 None v"  # the credential kind is given (None), the version tag is not


def test_names_impact_pack_needs_at_import(tmp_path):
    """Impact keeps execution.PromptExecutor's method at import, builds Noise_RandomNoise itself,
    imports latent_preview's previewers, and adds its web folder to nodes.EXTENSION_WEB_DIRS."""
    pack = tmp_path / "nodes_dir" / "injects_web"
    (pack / "js").mkdir(parents=True)
    (pack / "js" / "a.js").write_text("export const a = 1;\n")
    (pack / "__init__.py").write_text(textwrap.dedent("""
        import os
        import execution
        import nodes
        from comfy_extras.nodes_custom_sampler import Noise_RandomNoise
        from latent_preview import Latent2RGBPreviewer, TAESD, TAESDPreviewerImpl
        ORIGINAL = execution.PromptExecutor.handle_execution_error
        nodes.EXTENSION_WEB_DIRS["injects_web"] = os.path.join(os.path.dirname(__file__), "js")
        NODE_CLASS_MAPPINGS = {}
    """))
    (info,) = load_plugins(create_registry(), [tmp_path / "nodes_dir"], entry_points=False)
    assert (info.status, info.web_dir) == ("loaded", str((pack / "js").resolve()))
    noise = comfy_compat.import_module("comfy_extras.nodes_custom_sampler").Noise_RandomNoise(3)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    assert torch.equal(noise.generate_noise(latent), comfy_compat.import_module("comfy.sample").prepare_noise(
        latent["samples"], 3))
    previews = comfy_compat.import_module("latent_preview")
    image = previews.Latent2RGBPreviewer([[0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0, 0, 0]]).decode_latent_to_preview(
        torch.ones(1, 4, 2, 2))
    assert image.size == (2, 2) and image.getpixel((0, 0)) == (191, 191, 191)  # (0.5 + 1) / 2 * 255, truncated
    with pytest.raises(AttributeError, match="PromptExecutor"):
        comfy_compat.import_module("execution").PromptExecutor()


def test_video_types_and_wrap_attn():
    from fractions import Fraction

    api = comfy_compat.import_module("comfy_api.latest")
    assert api.Types.VideoContainer.as_input() == ["auto", "mp4"] and api.Types.VideoCodec.as_input() == ["auto", "h264"]
    assert api.Types.VideoContainer.get_extension("auto") == "mp4"
    video = api.InputImpl.VideoFromComponents(api.Types.VideoComponents(images=torch.zeros(3, 6, 10, 3),
                                                                        frame_rate=Fraction(8)))
    assert video.get_dimensions() == (10, 6) and video.get_components().frame_rate == 8
    with pytest.raises(AttributeError, match="VideoFromComponents.save_to"):
        video.save_to("x.mp4")
    attention = comfy_compat.import_module("comfy.ldm.modules.attention")
    seen = []

    @attention.wrap_attn
    def mine(q, k, v, heads, **kwargs):
        return ("mine", sorted(kwargs))

    def override(func, *args, **kwargs):
        seen.append(func.__name__)
        return ("override", func(*args, **kwargs))

    assert mine(1, 2, 3, 4) == ("mine", ["_inside_attn_wrapper"])
    assert mine(1, 2, 3, 4, transformer_options={"optimized_attention_override": override}) == (
        "override", ("mine", ["_inside_attn_wrapper", "transformer_options"]))
    assert seen == ["mine"]


def test_comfyuis_modules_are_imported_before_a_pack_that_deletes_what_its_import_added(tmp_path):
    """UltimateSDUpscale removes from sys.modules every module its own import added. On ComfyUI
    torch and ComfyUI's modules are always there first; here too, or a torch first imported by
    the pack would be imported again later and crash the process."""
    import subprocess

    pack = tmp_path / "nodes_dir" / "cleans_up"
    pack.mkdir(parents=True)
    (pack / "__init__.py").write_text(textwrap.dedent("""
        import sys
        before = set(sys.modules)
        import torch
        import folder_paths
        NODE_CLASS_MAPPINGS = {}
        for name in [m for m in sys.modules if m not in before]:
            del sys.modules[name]
    """))
    script = textwrap.dedent(f"""
        import sys
        from latentgraph.nodes import create_registry
        from latentgraph.plugins import load_plugins
        assert "torch" not in sys.modules  # latentgraph's registry alone does not import it
        (info,) = load_plugins(create_registry(), [{str(tmp_path / "nodes_dir")!r}], entry_points=False)
        torch, folder_paths = sys.modules["torch"], sys.modules["folder_paths"]
        import torch as again
        assert again is torch and float(again.ones(3).sum()) == 3.0
        print(info.status)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["loaded"]


def test_packs_find_each_other_in_nodes_node_class_mappings(tmp_path):
    """As in ComfyUI, nodes.NODE_CLASS_MAPPINGS holds every loaded pack's classes beside the core
    ones (Inspire calls Impact's RegionalSampler through it): a node of one pack runs another
    pack's class found there by name, and a renamed collision is there under its new name."""
    root = tmp_path / "nodes_dir"
    (root / "xp_doubler").mkdir(parents=True)
    (root / "xp_doubler" / "__init__.py").write_text(textwrap.dedent("""
        class Doubler:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT",)
            FUNCTION = "double"
            def double(self, value):
                return (value * 2,)
        NODE_CLASS_MAPPINGS = {"XpDoubler": Doubler, "EmptyImage": Doubler}
        NODE_DISPLAY_NAME_MAPPINGS = {"XpDoubler": "Doubler (xp)"}
    """))
    (root / "xp_user").mkdir()
    (root / "xp_user" / "__init__.py").write_text(textwrap.dedent("""
        import nodes
        class UsesDoubler:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"value": ("INT", {"default": 1})}}
            RETURN_TYPES = ("INT", "STRING")
            FUNCTION = "run"
            def run(self, value):
                if "XpDoubler" not in nodes.NODE_CLASS_MAPPINGS:
                    raise Exception("[ERROR] You need to install 'xp_doubler'")
                (twice,) = nodes.NODE_CLASS_MAPPINGS["XpDoubler"]().double(value)
                return (twice + 1, nodes.NODE_DISPLAY_NAME_MAPPINGS["XpDoubler"])
        NODE_CLASS_MAPPINGS = {"XpUsesDoubler": UsesDoubler}
    """))
    registry = create_registry()
    infos = load_plugins(registry, [root], entry_points=False)
    assert [(i.name, i.status) for i in infos] == [("xp_doubler", "loaded"), ("xp_user", "loaded")]
    assert sorted(infos[0].nodes) == ["XpDoubler", "xp_doubler/EmptyImage"]
    run = Executor(registry, Environment(output_dir=tmp_path / "o", input_dir=tmp_path / "i")).run(
        Workflow.from_api({"n": {"class_type": "XpUsesDoubler", "inputs": {"value": 20}}}), targets=["n"])
    assert run.get("n", 0) == 41 and run.get("n", 1) == "Doubler (xp)"
    mappings = comfy_compat.import_module("nodes").NODE_CLASS_MAPPINGS
    assert mappings["xp_doubler/EmptyImage"].FUNCTION == "double"
    assert mappings["EmptyImage"].__module__ == "nodes"  # the core node keeps its name, as latentgraph's registry

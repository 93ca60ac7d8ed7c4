"""The pack scanner (latentgraph.plugins.api_usage) on small packs written the way real ones use
ComfyUI's API, and the tool that tabulates it (tools/pack_api_usage.py)."""

from __future__ import annotations

import functools
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

from latentgraph.plugins import api_usage
from latentgraph.plugins.api_usage import ScanError, Usage, merge, scan

ROOT = Path(__file__).resolve().parents[1]


def write_pack(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
    return root


def test_module_alias_and_plain_import(tmp_path):
    pack = write_pack(tmp_path / "p", {"__init__.py": """
        import comfy.model_management as mm
        import comfy.sd

        def run(path):
            device = mm.get_torch_device()
            mm.soft_empty_cache()
            mm.soft_empty_cache()
            return comfy.sd.load_checkpoint_guess_config(path, output_vae=True)
        """})
    usage = scan(pack)
    assert dict(usage.names) == {
        "comfy.model_management": 1, "comfy.sd": 1,  # the imports
        "comfy.model_management.get_torch_device": 1, "comfy.model_management.soft_empty_cache": 2,
        "comfy.sd.load_checkpoint_guess_config": 1}
    assert usage.files == 1 and usage.unparsed == [] and usage.optional == set()


def test_from_import_and_instances_of_classes(tmp_path):
    pack = write_pack(tmp_path / "p", {"nodes_a.py": """
        from comfy.utils import ProgressBar, common_upscale as upscale
        from comfy import samplers
        import comfy.samplers

        class Sampler:
            @classmethod
            def INPUT_TYPES(cls):
                return {"required": {"sampler": (comfy.samplers.KSampler.SAMPLERS,),
                                     "scheduler": (samplers.KSampler.SCHEDULERS,)}}

            def go(self, images):
                pbar = ProgressBar(len(images))
                for i in range(3):
                    pbar.update_absolute(i, 3)
                names = comfy.samplers.KSampler.SAMPLERS.copy()
                return upscale(images, 8, 8, "nearest-exact", "disabled")
        """})
    names = scan(pack).names
    assert names["comfy.utils.ProgressBar"] == 2  # import + call
    assert names["comfy.utils.ProgressBar.update_absolute"] == 1  # through `pbar = ProgressBar(...)`
    assert names["comfy.utils.common_upscale"] == 2  # the alias `upscale` resolves to it
    assert names["comfy.samplers"] == 2  # `from comfy import samplers` and `import comfy.samplers`
    assert names["comfy.samplers.KSampler.SAMPLERS"] == 2  # a constant ends the name: no `.copy`
    assert names["comfy.samplers.KSampler.SCHEDULERS"] == 1
    assert sum(names.values()) == 10
    assert not any(n.endswith(".copy") for n in names)


def test_prompt_server_chains_stop_two_attributes_past_the_class(tmp_path):
    pack = write_pack(tmp_path / "p", {"__init__.py": """
        from server import PromptServer
        import server
        from aiohttp import web

        routes = PromptServer.instance.routes

        @PromptServer.instance.routes.post("/mypack/run")
        async def run(request):
            PromptServer.instance.send_sync("mypack.progress", {"value": 1})
            server.PromptServer.instance.send_sync("mypack.done", {})
            return web.json_response({})

        @routes.get("/mypack/list")
        async def listing(request):
            return web.json_response([])
        """})
    usage = scan(pack)
    assert dict(usage.names) == {
        "server.PromptServer": 1, "server": 1,
        "server.PromptServer.instance.routes": 3,  # the assignment, the decorator and `routes.get`
        "server.PromptServer.instance.send_sync": 2}
    assert dict(usage.third_party) == {"aiohttp": 1}


def test_function_level_imports_stay_in_their_function(tmp_path):
    pack = write_pack(tmp_path / "p", {"__init__.py": """
        def loras():
            import folder_paths
            from comfy import model_management as mm
            mm.throw_exception_if_processing_interrupted()
            return folder_paths.get_filename_list("loras")

        def other(folder_paths, mm):
            # the imports above belong to loras(): these names are parameters here
            return folder_paths.get_filename_list("x"), mm.interrupt_current_processing()

        class Node:
            import nodes
            MAX = nodes.MAX_RESOLUTION
        """})
    assert dict(scan(pack).names) == {
        "folder_paths": 1, "folder_paths.get_filename_list": 1, "comfy.model_management": 1,
        "comfy.model_management.throw_exception_if_processing_interrupted": 1,
        "nodes": 1, "nodes.MAX_RESOLUTION": 1}


def test_try_except_import_error_marks_names_optional(tmp_path):
    pack = write_pack(tmp_path / "p", {
        "a.py": """
            try:
                from comfy_execution.graph import ExecutionBlocker
                import comfy_extras.nodes_upscale_model as upscale_nodes
            except ImportError:
                ExecutionBlocker = None
            try:
                import folder_paths
            except KeyError:  # not an import guard
                pass

            def f():
                return ExecutionBlocker(None), upscale_nodes.ImageUpscaleWithModel
            """,
        "b.py": """
            import comfy_extras.nodes_upscale_model
            """})
    usage = scan(pack)
    assert usage.names["comfy_execution.graph.ExecutionBlocker"] == 2
    assert usage.names["comfy_extras.nodes_upscale_model"] == 2
    # b.py imports the upscale module outside any guard: the pack needs it
    assert usage.optional == {"comfy_execution.graph.ExecutionBlocker",
                              "comfy_extras.nodes_upscale_model.ImageUpscaleWithModel"}
    assert usage.features["execution_blocker"] == 1


def test_model_clip_vae_methods_by_name(tmp_path):
    pack = write_pack(tmp_path / "p", {"__init__.py": """
        import torch

        class Patch:
            def patch(self, model, clip, vae, tokenizer, text):
                m = model.clone()
                m.set_model_attn1_patch(lambda q, k, v, extra: (q, k, v))
                opts = m.model_options["transformer_options"]
                sigma = model.get_model_object("model_sampling").percent_to_sigma(0.5)
                t = torch.zeros(1).clone()          # a tensor: not counted
                words = tokenizer.tokenize(text)     # a transformers tokenizer: not counted
                tokens = clip.tokenize(text)
                cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
                data = text.encode("utf-8")          # a str: not counted
                image = vae.decode(torch.zeros(1, 4, 8, 8))
                tiles = self.first.decode_tiled(image)  # distinctive name: counted on anything
                return m, cond, pooled, image
        """})
    assert dict(scan(pack).methods) == {
        "MODEL.clone": 1, "MODEL.set_model_attn1_patch": 1, "MODEL.model_options": 1,
        "MODEL.get_model_object": 1, "MODEL.percent_to_sigma": 1, "CLIP.tokenize": 1,
        "CLIP.encode_from_tokens": 1, "VAE.decode": 1, "VAE.decode_tiled": 1}


def test_relative_imports_own_modules_and_third_party(tmp_path):
    pack = write_pack(tmp_path / "p", {
        "__init__.py": """
            from .nodes import NODE_CLASS_MAPPINGS
            from . import utils as pack_utils
            from .utils import helper
            import numpy as np, cv2
            import os, json, collections.abc
            import helpers            # the pack's own file, on sys.path
            from lib.sub import thing  # the pack's own folder
            from PIL import Image
            import PIL.ImageOps
            """,
        "nodes.py": "NODE_CLASS_MAPPINGS = {}\n",
        "utils.py": "def helper():\n    return 1\n",
        "helpers.py": "",
        "lib/sub.py": "thing = 1\n"})
    usage = scan(pack)
    assert dict(usage.names) == {}
    assert dict(usage.third_party) == {"numpy": 1, "cv2": 1, "PIL": 2}
    assert usage.files == 5


def test_star_imports_of_the_packs_own_files_bring_their_aliases(tmp_path):
    pack = write_pack(tmp_path / "p", {
        "tsc_utils.py": """
            import folder_paths
            import comfy.model_management as mm
            from .deeper import *
            _private = folder_paths
            """,
        "deeper.py": """
            from comfy.utils import ProgressBar
            from .tsc_utils import *   # a cycle: followed once
            """,
        "nodes.py": "import folder_paths as fp\n",  # the pack's own nodes.py: `from nodes import *` is ComfyUI's
        "sub/config.py": "from nodes import *\nfrom ..tsc_utils import *\n",
        "sub/loaders.py": """
            from ..tsc_utils import *
            from .config import *

            def inputs():
                pbar = ProgressBar(2)
                return folder_paths.get_filename_list("checkpoints"), mm.get_torch_device(), _private, fp
            """,
        "main.py": "from tsc_utils import *\nx = folder_paths.get_output_directory()\n",
        "modules/pkg/a.py": "from pkg.b import *\nfolder_paths.get_input_directory()\n",  # modules/ on sys.path
        "modules/pkg/b.py": "import folder_paths\nimport comfy.sd as sd\n",
        "modules/pkg/c.py": "from .b import sd as comfy_sd, folder_paths\ncomfy_sd.load_lora_for_models()\n"})
    usage = scan(pack)
    assert dict(usage.names) == {
        # three imports and `_private = folder_paths`; `_private` and `fp` do not travel through a star
        "folder_paths": 4, "comfy.model_management": 1, "comfy.utils.ProgressBar": 2, "nodes": 1,
        "folder_paths.get_filename_list": 1, "comfy.model_management.get_torch_device": 1,
        "folder_paths.get_output_directory": 1, "folder_paths.get_input_directory": 1,
        "comfy.sd": 1, "comfy.sd.load_lora_for_models": 1}  # a name imported from the pack's own file


def test_file_that_does_not_parse_is_counted_and_skipped(tmp_path):
    pack = write_pack(tmp_path / "p", {
        "good.py": "import folder_paths\nfolder_paths.get_output_directory()\n",
        "old/py2.py": "print 'hello'\n",
        "bad.py": "def broken(:\n    pass\n"})
    usage = scan(pack)
    assert usage.files == 3
    assert [u.split(":")[0] for u in usage.unparsed] == ["bad.py", "old/py2.py"]
    assert all(": SyntaxError: " in u for u in usage.unparsed)
    assert dict(usage.names) == {"folder_paths": 1, "folder_paths.get_output_directory": 1}


def test_a_file_too_deep_to_walk_counts_nothing(tmp_path):
    # parses, but its 600-deep expression is deeper than the walk may recurse
    deep = "import server\nx = " + " + ".join(["server.PromptServer.instance.client_id"] * 600) + "\n"
    pack = write_pack(tmp_path / "p", {"deep.py": deep, "ok.py": "import server\n"})
    usage = scan(pack)
    assert usage.unparsed == ["deep.py: RecursionError: nested too deeply to walk"]
    assert dict(usage.names) == {"server": 1}


def test_size_budgets_are_checked_before_any_file_is_read(tmp_path, monkeypatch):
    pack = write_pack(tmp_path / "p", {"a.py": "x = 1\n" * 10, "big.py": "y = 2\n" * 40})
    read = []
    original = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: read.append(self) or original(self, *a, **k))
    with pytest.raises(ScanError) as exc:
        scan(pack, max_file_bytes=100)
    assert str(exc.value) == f"{pack / 'big.py'}: 240 bytes is over the budget of 100 bytes for one file"
    with pytest.raises(ScanError) as exc:
        scan(pack, max_pack_bytes=250)
    assert str(exc.value) == f"{pack}: its .py files hold 300 bytes, over the budget of 250 bytes for one pack"
    with pytest.raises(ScanError, match=r"more than the budget of 1 \.py files for one pack"):
        scan(pack, max_files=1)
    assert read == []
    assert scan(pack, max_file_bytes=240, max_pack_bytes=300).bytes == 300
    assert sorted(p.name for p in read) == ["a.py", "big.py"]  # the monkeypatch does see reads
    with pytest.raises(ScanError, match="not a folder or a .py file"):
        scan(pack / "absent")
    one = scan(pack / "a.py", max_file_bytes=240)  # a single-module pack
    assert (one.pack, one.files, one.bytes) == ("a", 1, (pack / "a.py").stat().st_size)
    with pytest.raises(ScanError, match="over the budget of 10 bytes for one file"):
        scan(pack / "a.py", max_file_bytes=10)


def test_tests_hidden_folders_and_links_are_not_scanned(tmp_path):
    outside = write_pack(tmp_path / "outside", {"x.py": "import nodes\n"})
    pack = write_pack(tmp_path / "p", {
        "__init__.py": "import folder_paths\n",
        "tests/test_x.py": "import comfy.sd\n",
        ".venv/lib.py": "import comfy.utils\n"})
    (pack / "linked").symlink_to(outside, target_is_directory=True)
    usage = scan(pack)
    assert dict(usage.names) == {"folder_paths": 1} and usage.files == 1


def test_features_and_node_mappings(tmp_path):
    pack = write_pack(tmp_path / "p", {
        "__init__.py": """
            from .flow import FLOW_CLASS_MAPPINGS
            WEB_DIRECTORY = "./js"
            NODE_CLASS_MAPPINGS = {"Switch": object, "Loop": object, **FLOW_CLASS_MAPPINGS}
            NODE_CLASS_MAPPINGS["Extra"] = object
            NODE_CLASS_MAPPINGS.update({"Loop": object, "More": object})
            """,
        "flow.py": """
            from comfy_execution.graph_utils import GraphBuilder

            class Switch:
                @classmethod
                def INPUT_TYPES(cls):
                    return {"required": {"on": ("BOOLEAN",), "a": ("*", {"lazy": True}), "b": ("*", {"lazy": True})},
                            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}
                RETURN_NAMES = ("out",)
                OUTPUT_NODE = False

                def check_lazy_status(self, on, a=None, b=None):
                    return ["a"] if on else ["b"]

                @classmethod
                def VALIDATE_INPUTS(cls, on):
                    return True

                @classmethod
                def IS_CHANGED(cls, **kw):
                    return float("nan")

            class Loop:
                def run(self, n):
                    graph = GraphBuilder()
                    node = graph.node("Add", a=1, b=n)
                    return {"result": (node.out(0),), "expand": graph.finalize()}

            FLOW_CLASS_MAPPINGS = {"Flow A": Switch, "Flow B": Loop}
            for name in ("x", "y"):
                FLOW_CLASS_MAPPINGS[name] = Loop   # made by code: the count is a lower bound
            """})
    usage = scan(pack)
    assert {k: v for k, v in usage.features.items() if v} == {
        "web_directory": 1, "lazy_inputs": 2, "check_lazy_status": 1, "validate_inputs": 1, "is_changed": 1,
        "expand_returns": 1, "graph_builder": 3}  # GraphBuilder(), graph.node, graph.finalize
    assert usage.mapping_keys == {"Switch", "Loop", "Extra", "More", "Flow A", "Flow B"}
    assert usage.node_mappings == 6 and usage.mappings_partial is True
    assert dict(usage.node_api) == {"PROMPT": 1, "UNIQUE_ID": 1, "RETURN_NAMES": 1, "OUTPUT_NODE": 1}
    assert usage.names["comfy_execution.graph_utils.GraphBuilder.node"] == 1


def test_v3_pack(tmp_path):
    pack = write_pack(tmp_path / "p", {"__init__.py": """
        from typing_extensions import override
        from comfy_api.latest import ComfyExtension, io

        class Add(io.ComfyNode):
            @classmethod
            def define_schema(cls) -> io.Schema:
                return io.Schema(node_id="Add", inputs=[io.Int.Input("a"), io.Int.Input("b")],
                                 outputs=[io.Int.Output()])

            @classmethod
            def execute(cls, a, b) -> io.NodeOutput:
                return io.NodeOutput(a + b)

        class Ext(ComfyExtension):
            @override
            async def get_node_list(self) -> list[type[io.ComfyNode]]:
                return [Add]

        async def comfy_entrypoint() -> Ext:
            return Ext()
        """})
    usage = scan(pack)
    assert usage.features["v3_nodes"] == 1 and usage.features["comfy_entrypoint"] == 1
    assert usage.names["comfy_api.latest.io.Int.Input"] == 2
    assert usage.names["comfy_api.latest.io.ComfyNode"] == 2
    assert usage.names["comfy_api.latest.io.NodeOutput"] == 2
    assert usage.features["v3_api"] == sum(usage.names.values()) - 2  # all but the two imports
    assert dict(usage.third_party) == {"typing_extensions": 1}


def test_merge_counts_packs_and_uses():
    a = Usage("a", names={"folder_paths": 2, "comfy.utils.ProgressBar": 3}, optional={"comfy.utils.ProgressBar"},
              methods={"MODEL.clone": 1}, third_party={"cv2": 1})
    b = Usage("b", names={"folder_paths": 1}, third_party={"cv2": 4, "numpy": 1})
    a.features["lazy_inputs"] = 2
    totals = merge([a, b])
    assert totals["packs"] == 2
    assert totals["names"] == {"folder_paths": {"packs": 2, "uses": 3, "optional_packs": 0},
                               "comfy.utils.ProgressBar": {"packs": 1, "uses": 3, "optional_packs": 1}}
    assert list(totals["third_party"]) == ["cv2", "numpy"]
    assert totals["third_party"]["cv2"] == {"packs": 2, "uses": 5, "optional_packs": 0}
    assert totals["methods"] == {"MODEL.clone": {"packs": 1, "uses": 1, "optional_packs": 0}}
    assert totals["features"] == {"lazy_inputs": {"packs": 1, "uses": 2, "optional_packs": 0}}
    doc = json.loads(json.dumps(a.to_json()))
    assert doc["names"] == {"comfy.utils.ProgressBar": 3, "folder_paths": 2}
    assert doc["optional"] == ["comfy.utils.ProgressBar"] and doc["features"]["lazy_inputs"] == 2
    assert list(doc["features"]) == list(api_usage.FEATURES)


def _tool():
    spec = importlib.util.spec_from_file_location("pack_api_usage", ROOT / "tools" / "pack_api_usage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tool_writes_markdown_and_json(tmp_path):
    packs = tmp_path / "packs"
    write_pack(packs / "pack-one", {"__init__.py": "import folder_paths\nimport comfy.model_management as mm\n"
                                                   "mm.get_torch_device()\nfolder_paths.get_filename_list('x')\n"})
    write_pack(packs / "pack_two", {"__init__.py": "import folder_paths\nfolder_paths.get_filename_list('y')\n"
                                                   "def f(model):\n    return model.clone()\n"})
    write_pack(packs / "huge", {"a.py": "x = 1\n" * 40})
    listing = tmp_path / "packs.json"
    listing.write_text(json.dumps([{"repo": "someone/pack-one", "commit": "a" * 40, "kind": "utility"}]))
    tool = _tool()
    tool.scan = functools.partial(api_usage.scan, max_file_bytes=200)  # "huge" is over it
    out_md, out_json = tmp_path / "usage.md", tmp_path / "usage.json"
    assert tool.main([str(packs), "--packs", str(listing), "--markdown", str(out_md), "--json", str(out_json)]) == 0
    text = out_md.read_text()
    assert "| someone/pack-one | utility | `aaaaaaaaaaaa` | 1 | 0 | 0 | 0 | 0 | 4 |" in text
    assert "| pack_two | ? | `?` | 1 | 0 | 0 | 0 | 0 | 2 |" in text  # not in the pack list
    assert "| `folder_paths.get_filename_list` | 2 | 2 |  |" in text
    assert "## `folder_paths` (used by 2 packs)" in text and "## `comfy` (used by 1 packs)" in text
    assert "| `MODEL.clone` | 1 | 1 |" in text
    assert "| 0 | 0 |  |\n| 4 | 2 | pack-one, pack_two |" in text  # K = every name: all covered
    usages = [scan(packs / "pack-one"), scan(packs / "pack_two")]
    ranked = merge(usages)["names"]
    assert list(ranked) == ["folder_paths", "folder_paths.get_filename_list", "comfy.model_management",
                            "comfy.model_management.get_torch_device"]
    assert tool.coverage(usages, ranked, steps=(1, 2, 3)) == [
        (1, 0, []), (2, 1, ["pack_two"]), (3, 1, []), (4, 2, ["pack-one"])]
    doc = json.loads(out_json.read_text())
    assert [p["pack"] for p in doc["packs"]] == ["pack-one", "pack_two"]
    assert doc["packs"][0]["commit"] == "a" * 40 and doc["packs"][1]["commit"] is None
    assert doc["failures"] == [f"huge: {packs / 'huge' / 'a.py'}: 240 bytes is over the budget of 200 bytes "
                               "for one file"]
    assert f"- huge: {packs / 'huge' / 'a.py'}: 240 bytes is over" in text
    assert doc["totals"]["names"]["folder_paths"] == {"packs": 2, "uses": 2, "optional_packs": 0}


def test_tool_rejects_a_bad_pack_list(tmp_path):
    listing = tmp_path / "packs.json"
    listing.write_text(json.dumps([{"repo": "no-owner", "commit": "x", "kind": "y"}]))
    tool = _tool()
    with pytest.raises(ScanError, match=r"packs.json: entry 0 needs repo \(\"owner/name\"\), commit and kind"):
        tool.load_pack_list(listing)
    listing.write_text("{")
    with pytest.raises(ScanError, match=r"packs.json: not valid JSON"):
        tool.load_pack_list(listing)


def test_the_committed_pack_list_is_well_formed():
    packs = _tool().load_pack_list()
    assert len(packs) >= 50
    assert all(len(p["commit"]) == 40 and int(p["commit"], 16) >= 0 for p in packs.values())
    for name in ("ComfyUI_essentials", "ComfyUI-Impact-Pack", "was-node-suite-comfyui", "rgthree-comfy"):
        assert name in packs

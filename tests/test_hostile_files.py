"""Hostile workflow files: small files that would grow into gigabytes, deep nesting, huge files,
PNG bombs. Each is refused with an error naming the file and the budget (latentgraph/graph/
budgets.py), before the allocation, by the library and by `validate`, `run` and `convert`, and
nothing is written anywhere."""

from __future__ import annotations

import functools
import json
import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from latentgraph import cli
from latentgraph.graph import Workflow, WorkflowError
from latentgraph.graph.budgets import BUDGETS
from latentgraph.nodes import create_registry

MB = 2**20


@pytest.fixture(scope="module")
def registry():
    return create_registry()


def files_under(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def load_error(path: Path, registry=None) -> str:
    with pytest.raises(WorkflowError) as info:
        Workflow.load(path, registry)
    return info.value.format()


def peak_bytes(fn) -> int:
    """Peak Python allocation while ``fn`` runs."""
    tracemalloc.start()
    try:
        fn()
    except WorkflowError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def refused_by_the_cli(tmp_path: Path, monkeypatch, capsys, path: Path, message: str, sets=()) -> None:
    """`validate`, `run` and `convert -o OUT` each exit 1 printing exactly ``message``; no file
    appears or changes anywhere under tmp_path (OUT included)."""
    monkeypatch.chdir(tmp_path)
    before = files_under(tmp_path)
    folders = ["--output-dir", "out", "--input-dir", "in", "--models-dir", "models", "--temp-dir", "tmp"]
    extra = [a for s in sets for a in ("--set", s)]
    for argv in (["validate", str(path), "--no-plugins", *folders, *extra],
                 ["run", str(path), "--no-plugins", "--no-progress", *folders, *extra],
                 ["convert", str(path), "--no-plugins", "--to", "api", "-o", "converted.json"]):
        if argv[0] == "convert" and sets:
            continue
        assert cli.main(argv) == 1, argv[0]
        captured = capsys.readouterr()
        assert captured.err == message + "\n", argv[0]
        assert captured.out == ""
    assert files_under(tmp_path) == before
    assert not (tmp_path / "converted.json").exists() and not (tmp_path / "out").exists()


# -- 1. YAML anchors and aliases (a < 1 KB file that expands to gigabytes) ----------------------
def laughs(levels: int = 9) -> str:
    lines = ["nodes:", "  img: {type: EmptyImage}", "  save: {type: SaveImage, images: img}",
             "  words:", "    type: Concat", "    a: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        lines.append(f"    x{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_at_its_first_anchor_by_library_and_cli(tmp_path, monkeypatch, capsys):
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs())
    assert path.stat().st_size < 1024  # 9^9 = 387 million strings once expanded
    message = (f"{path}:6: YAML anchors (&l0) are not allowed in latentgraph's YAML files (they can expand a small file "
               f"into gigabytes): write the value out (column 8)")
    assert load_error(path) == message
    assert peak_bytes(lambda: Workflow.load(path)) < 2 * MB
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path, message)


@pytest.mark.parametrize("text,line,col,what", [
    ("nodes:\n  a: {type: EmptyImage, width: *w}\n", 2, 32, "aliases (*w)"),              # alias alone
    ("nodes:\n  a:\n    <<: *base\n    type: EmptyImage\n", 3, 9, "aliases (*base)"),     # merge key
    ("base: &b {type: EmptyImage}\nnodes: {a: {type: EmptyImage}}\n", 1, 7, "anchors (&b)"),
    ("nodes:\n  a: !!set &s {x, y}\n", 2, 6, "anchors (&s)"),
])
def test_every_anchor_and_alias_is_refused_with_its_line(tmp_path, text, line, col, what):
    path = tmp_path / "flow.yaml"
    path.write_text(text)
    assert load_error(path) == (f"{path}:{line}: YAML {what} are not allowed in latentgraph's YAML files (they can expand a "
                                f"small file into gigabytes): write the value out (column {col})")


def test_an_alias_bomb_in_a_set_value_is_refused(tmp_path, monkeypatch, capsys):
    path = tmp_path / "flow.yaml"
    path.write_text("nodes:\n  img: {type: EmptyImage}\n  save: {type: SaveImage, images: img}\n")
    bomb = "[&a [1, 1, 1, 1, 1, 1, 1, 1], &b [*a, *a, *a, *a, *a, *a, *a, *a], [*b, *b, *b, *b, *b, *b, *b]]"
    message = (f"{path}: node 'img', input 'width': --set img.width: YAML anchors (&a) are not allowed in "
               f"latentgraph's YAML files (they can expand a small file into gigabytes): write the value out")
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path, message, sets=[f"img.width={bomb}"])
    long_value = "1" * (BUDGETS["set_value_chars"].limit + 1)
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path,
                       f"{path}: node 'img', input 'width': --set img.width=...: the value exceeds the limit "
                       f"set_value_chars = 100,000 characters", sets=[f"img.width={long_value}"])


# -- 2. UI subgraphs that flatten into 10^8 nodes ------------------------------------------------
def nested_ui(levels: int, fanout: int, leaf: str | None = "EmptyImage", loop: bool = False) -> dict:
    """Definition i holds ``fanout`` instances of definition i+1; the last holds ``fanout`` ``leaf``
    nodes (or nothing); with ``loop`` the last holds an instance of the first."""
    subs = []
    for i in range(levels):
        inner = f"d{i + 1}" if i + 1 < levels else ("d0" if loop else leaf)
        nodes = [{"id": j + 1, "type": inner, "inputs": [], "outputs": []} for j in range(fanout)] if inner else []
        subs.append({"id": f"d{i}", "name": f"level {i}", "nodes": nodes, "links": [], "inputs": [], "outputs": []})
    return {"nodes": [{"id": 1, "type": "d0", "inputs": [], "outputs": []}], "links": [],
            "definitions": {"subgraphs": subs}, "version": 0.4}


@pytest.mark.parametrize("levels,fanout,leaf", [(8, 10, "EmptyImage"), (8, 10, None), (3, 200, "Note")])
def test_a_subgraph_bomb_is_refused_before_flattening(tmp_path, registry, levels, fanout, leaf):
    path = tmp_path / "bomb.json"
    path.write_text(json.dumps(nested_ui(levels, fanout, leaf)))
    assert path.stat().st_size < 40_000  # fanout^levels nodes (or empty instances) once flattened
    start = time.perf_counter()
    message = load_error(path, registry)
    assert time.perf_counter() - start < 0.5
    assert message == (f"{path}: the workflow once its subgraphs are flattened (instances x their contents) "
                       f"exceeds the limit nodes = 20,000 nodes")
    assert peak_bytes(lambda: Workflow.load(path, registry)) < 5 * MB


def test_the_subgraph_bomb_through_the_cli(tmp_path, monkeypatch, capsys):
    path = tmp_path / "bomb.json"
    path.write_text(json.dumps(nested_ui(8, 10)))
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path,
                       f"{path}: the workflow once its subgraphs are flattened (instances x their contents) "
                       f"exceeds the limit nodes = 20,000 nodes")


def test_subgraphs_nested_too_deep_or_in_a_loop(tmp_path, registry):
    path = tmp_path / "deep.json"
    path.write_text(json.dumps(nested_ui(40, 1)))
    assert load_error(path, registry) == (f"{path}: subgraphs nested inside each other exceeds the limit "
                                          f"subgraph_depth = 32 levels")
    path.write_text(json.dumps(nested_ui(32, 1, leaf="PreviewImage")))  # exactly at the budget: fine
    assert list(Workflow.load(path, registry).nodes) == [":".join(["1"] * 33)]
    path.write_text(json.dumps(nested_ui(3, 2, loop=True)))
    assert load_error(path, registry) == f"{path}: subgraph 'level 0' contains itself (node 1 of 'level 2')"


def test_a_reroute_chain_longer_than_the_hop_budget(tmp_path, registry):
    n = 300
    nodes = [{"id": 1, "type": "EmptyImage", "inputs": [], "outputs": [{"name": "IMAGE", "type": "IMAGE"}],
              "widgets_values": [8, 8, 1, 0]}]
    links = []
    for i in range(2, n + 2):
        nodes.append({"id": i, "type": "Reroute", "inputs": [{"name": "", "type": "*", "link": i - 1}],
                      "outputs": [{"name": "", "type": "IMAGE"}]})
        links.append([i - 1, i - 1, 0, i, 0, "IMAGE"])
    nodes.append({"id": n + 2, "type": "SaveImage", "inputs": [{"name": "images", "type": "IMAGE", "link": n + 1}],
                  "outputs": [], "widgets_values": ["x"]})
    links.append([n + 1, n + 1, 0, n + 2, 0, "IMAGE"])
    path = tmp_path / "reroutes.json"
    path.write_text(json.dumps({"nodes": nodes, "links": links, "version": 0.4}))
    assert load_error(path, registry).startswith(f"{path}: the link into node ")
    assert load_error(path, registry).endswith("passing through reroutes, bypassed nodes and subgraphs exceeds "
                                               "the limit link_hops = 256 hops")


# -- 3. nesting deeper than Python's parsers can take -------------------------------------------
DEEP_JSON = "the JSON's nesting of lists and objects exceeds the limit nesting_depth = 64 levels"


@pytest.mark.parametrize("text", [
    "[" * 100_000 + "]" * 100_000,                                                   # past Python's stack
    '{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + "[" * 70 + "]" * 70 + "}}}",  # past the budget
    '{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + '{"a": ' * 2000 + "1" + "}" * 2000 + "}}}",
])
def test_deep_json_is_refused(tmp_path, monkeypatch, capsys, text):
    path = tmp_path / "deep.json"
    path.write_text(text)
    assert load_error(path) == f"{path}: {DEEP_JSON}"
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path, f"{path}: {DEEP_JSON}")


@pytest.mark.parametrize("text,line", [
    ("nodes:\n  a: {type: EmptyImage, width: " + "[" * 100_000 + "]" * 100_000 + "}\n", 2),
    # 65: the YAML form may sit one level deeper than the API JSON (YAML_DEPTH_SLACK)
    ("nodes:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(80)) + "  " * 81 + "v\n", 66),
])
def test_deep_yaml_is_refused_with_its_line(tmp_path, text, line):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    message = load_error(path)
    assert message.startswith(f"{path}:{line}: the YAML's nesting of lists and mappings exceeds the limit "
                              f"nesting_depth = 64 levels (column ")


def test_nesting_at_the_budget_loads(tmp_path):
    path = tmp_path / "ok.json"
    path.write_text('{"1": {"class_type": "EmptyImage", "inputs": {"width": ' + "[" * 61 + "]" * 61 + "}}}")
    assert Workflow.load(path)["1"].inputs["width"] is not None


def test_a_workflow_at_the_budget_converts_to_yaml_and_back(tmp_path):
    """Found by the fuzzer: YAML puts `meta` (and `__value__`) one level deeper than API JSON,
    so the YAML reader has one level of slack and the workflow it builds has the API's budget."""
    deep: object = {"title": "t"}
    for _ in range(61):  # root > node > _meta > 61 levels = 64
        deep = {"k": deep}
    api = {"1": {"class_type": "EmptyImage", "inputs": {}, "_meta": deep}}
    wf = Workflow.loads(json.dumps(api), "api.json")
    back = Workflow.loads(wf.to_yaml(), "back.yaml")
    assert back.to_api() == wf.to_api() and back.to_api()["1"]["_meta"]["k"] == deep["k"]
    too_deep = "x"
    for _ in range(62):  # nodes > b > junk > 62 lists = 65 in YAML, and 65 as API JSON
        too_deep = [too_deep]
    text = "nodes:\n  b:\n    type: PreviewImage\n    junk: " + json.dumps(too_deep) + "\n"
    with pytest.raises(WorkflowError) as info:
        Workflow.loads(text, "deep.yaml")
    assert info.value.format() == "deep.yaml: the workflow's nesting of lists and mappings exceeds the limit " \
                                  "nesting_depth = 64 levels"


def test_a_prompt_sent_as_data_is_held_to_the_same_budgets():
    """The server's /prompt hands parsed JSON to Workflow.from_api: the same limits apply."""
    deep = 1
    for _ in range(100):
        deep = [deep]
    with pytest.raises(WorkflowError) as info:
        Workflow.from_api({"1": {"class_type": "EmptyImage", "inputs": {"width": deep}}}, source="prompt")
    assert info.value.format() == "prompt: the prompt's nesting of lists and objects exceeds the limit " \
                                  "nesting_depth = 64 levels"
    many = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(20_001)}
    with pytest.raises(WorkflowError) as info:
        Workflow.from_api(many, source="prompt")
    assert info.value.format() == "prompt: the workflow's node count exceeds the limit nodes = 20,000 nodes " \
                                  "(found 20,001)"


# -- 4. huge files and counts -------------------------------------------------------------------
def sparse(path: Path, head: bytes, size: int) -> Path:
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)  # no disk blocks, no memory: the budget must be checked before reading
    return path


def test_a_huge_workflow_file_is_refused_by_its_size_before_reading(tmp_path, monkeypatch, capsys):
    path = sparse(tmp_path / "huge.json", b'{"1": ', 33 * MB)
    message = f"{path}: the workflow file exceeds the limit workflow_file_bytes = 33,554,432 bytes (found 34,603,008)"
    assert load_error(path) == message
    assert peak_bytes(lambda: Workflow.load(path)) < 1 * MB
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path, message)


def test_a_huge_png_is_refused_by_its_size_before_reading(tmp_path):
    path = sparse(tmp_path / "huge.png", b"\x89PNG\r\n\x1a\n", 600 * MB)
    assert load_error(path) == (f"{path}: the PNG file exceeds the limit png_file_bytes = 536,870,912 bytes "
                                f"(found 629,145,600)")
    assert peak_bytes(lambda: Workflow.load(path)) < 1 * MB


@pytest.mark.parametrize("fmt", ["api", "yaml_flow", "ui"])
def test_too_many_nodes(tmp_path, registry, fmt):
    n = 20_001
    if fmt == "api":
        doc = {str(i): {"class_type": "EmptyImage", "inputs": {}} for i in range(n)}
        what = "the workflow's node count"
    elif fmt == "yaml_flow":  # JSON-shaped YAML: {nodes: {...}}
        doc = {"nodes": {f"n{i}": {"type": "EmptyImage"} for i in range(n)}}
        what = "the workflow's node count"
    else:
        doc = {"nodes": [{"id": i, "type": "EmptyImage"} for i in range(n)], "links": []}
        what = "the workflow: the node count"
    path = tmp_path / "many.json"
    path.write_text(json.dumps(doc))
    assert load_error(path, registry) == f"{path}: {what} exceeds the limit nodes = 20,000 nodes (found 20,001)"


def test_too_many_links(tmp_path, registry):
    links = [[i, 1, 0, 2, 0, "IMAGE"] for i in range(200_001)]
    path = tmp_path / "links.json"
    path.write_text(json.dumps({"nodes": [], "links": links}))
    assert load_error(path, registry) == (f"{path}: the workflow: the link count exceeds the limit links = "
                                          f"200,000 links (found 200,001)")


# -- 5. PNGs: text chunks and decompression bombs -------------------------------------------------
def chunk(kind: bytes, data: bytes, length: int | None = None) -> bytes:
    size = len(data) if length is None else length
    return struct.pack(">I", size) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


IHDR = chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))


def png(*chunks: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + IHDR + b"".join(chunks) + chunk(b"IEND", b"")


@functools.cache
def zeros_deflated(n_mb: int) -> bytes:
    comp = zlib.compressobj(1)
    block = bytes(MB)
    return b"".join(comp.compress(block) for _ in range(n_mb)) + comp.flush()


def test_a_text_chunk_announcing_100_mb_is_refused_before_reading(tmp_path, monkeypatch, capsys):
    path = tmp_path / "liar.png"
    path.write_bytes(png(chunk(b"tEXt", b"prompt\0{}", length=100 * MB)))
    message = (f"{path}: the PNG's tEXt chunk exceeds the limit png_text_bytes = 33,554,432 bytes "
               f"(found 104,857,600)")
    assert load_error(path) == message
    refused_by_the_cli(tmp_path, monkeypatch, capsys, path, message)


@pytest.mark.parametrize("kind,head", [(b"zTXt", b"prompt\0\0"), (b"iTXt", b"prompt\0\1\0\0\0")])
def test_a_compressed_text_bomb_stops_at_the_budget(tmp_path, kind, head):
    path = tmp_path / "bomb.png"
    path.write_bytes(png(chunk(kind, head + zeros_deflated(1024))))
    assert path.stat().st_size < 5 * MB  # 1 GB once inflated
    assert load_error(path) == (f"{path}: the PNG's {kind.decode()} chunk 'prompt' once inflated exceeds the "
                                f"limit png_text_bytes = 33,554,432 bytes")
    assert peak_bytes(lambda: Workflow.load(path)) < 64 * MB  # the budget (32 MB), not the 1 GB


def test_text_chunks_together_and_chunk_count(tmp_path):
    path = tmp_path / "many.png"
    part = zeros_deflated(30)
    path.write_bytes(png(*(chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + part) for i in range(3))))
    assert load_error(path) == (f"{path}: the PNG's text chunks together exceeds the limit png_text_total_bytes = "
                                f"67,108,864 bytes (found 94,371,840)")
    path.write_bytes(png(*(chunk(b"tIME", b"") for _ in range(200_000))))
    assert load_error(path) == (f"{path}: the PNG's chunk count exceeds the limit png_chunks = 200,000 chunks "
                                f"(found 200,001)")


def test_a_png_saved_by_pillow_still_loads_with_its_metadata(tmp_path):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "é✓"}}}
    info = PngImagePlugin.PngInfo()
    info.add_text("prompt", json.dumps(prompt, ensure_ascii=False))  # not latin-1: Pillow writes iTXt
    info.add_text("workflow", json.dumps({"nodes": [], "links": []}), zip=True)  # zTXt
    info.add_text("parameters", "not json")
    path = tmp_path / "saved.png"
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    wf = Workflow.load(path)
    assert wf.origin == "png" and wf["2"].inputs["filename_prefix"] == "é✓"
    assert wf.extra == {"extra_pnginfo": {"workflow": {"nodes": [], "links": []}}}


# -- section 6: the engine's modules import one way ----------------------------------------------
def _graph_imports() -> dict[str, set[str]]:
    """module -> the latentgraph.graph modules it imports, at the top or inside functions."""
    import ast

    folder = Path(__file__).resolve().parents[1] / "latentgraph" / "graph"
    graph: dict[str, set[str]] = {}
    for path in folder.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("latentgraph.graph."):
                deps.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("latentgraph.graph.")}
        graph[path.stem] = deps
    return graph


def test_loaders_and_workflow_import_one_way():
    graph = _graph_imports()
    assert "loaders" in graph["workflow"]  # the model builds itself from what the readers return
    assert graph["loaders"] == {"budgets", "errors"}  # the readers know files, not the model
    assert "workflow" not in graph["ui_format"] and "loaders" not in graph["ui_format"]


def test_the_engine_has_no_import_cycle():
    graph = _graph_imports()
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join((*trail, name))}"
        state[name] = 1
        for dep in sorted(graph.get(name, ())):
            visit(dep, (*trail, name))
        state[name] = 2

    for name in sorted(graph):
        visit(name, ())
    assert len(state) == len(graph) >= 12

"""Fuzzing workflow files: YAML, API JSON, UI JSON, PNGs and raw bytes, generated from scratch and
by mutating the real workflows of the repository, each loaded and validated against the built-in
registry (and a subset through the CLI in-process). A clean WorkflowError or ValidationError, or
success, is all that may come out: never another exception, never an internal error.

bench/fuzz_workflows.py runs the same generators for many more cases.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import struct
import tempfile
import zlib
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latentgraph import cli
from latentgraph.graph import Environment, ValidationError, Workflow, WorkflowError, validate
from latentgraph.nodes import create_registry

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = create_registry()
CLASSES = sorted(REGISTRY.names())
FRONTEND = ["Reroute", "PrimitiveNode", "Note", "MarkdownNote"]


def _corpus() -> dict[str, list]:
    """The real workflows of the repository, parsed: the seeds that mutations start from."""
    out: dict[str, list] = {"yaml": [], "api": [], "ui": []}
    for path in sorted((ROOT / "workflows").glob("*.yaml")):
        out["yaml"].append(yaml.safe_load(path.read_text()))
    for folder in ("workflows", "tests/fixtures/comfy_workflows", "tests/fixtures/subgraphs"):
        for path in sorted((ROOT / folder).glob("*.json")):
            key = "ui" if path.name.endswith(".ui.json") else "api"
            out[key].append(json.loads(path.read_text()))
    return out


CORPUS = _corpus()

# -- values --------------------------------------------------------------------------------
TRICKY_TEXT = ["", " ", "*", "-10", "-20", "²", "٣", "9" * 5000, "a.0", "a.²", "a." + "9" * 40, "ckpt.MODEL",
               "__value__", "\x00", "\ud7ff", "é" * 50, "nodes", "class_type", "1:2:3", "..", "a.", ".a",
               "seed", "randomize", "image", "upload", "&a", "*a", "<<", "{", "[", "%", "!!python/object"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-2**63, 2**63), st.just(10**400), st.just(-1),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12), st.sampled_from(TRICKY_TEXT))


def deep(leaf, depth: int):
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


values = st.one_of(
    st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["__value__", "from", "output", "x", "value"]), inner, max_size=3), max_leaves=8),
    st.builds(deep, scalars, st.integers(20, 120)),
)


@st.composite
def link_to(draw, ids: list):
    node = draw(st.sampled_from(ids) if ids else st.text(max_size=4))
    index = draw(st.sampled_from([0, 1, 2, 7, -1, "0", "MODEL", "IMAGE", None, True, 1.5]))
    return [node, index]


# -- API JSON ------------------------------------------------------------------------------
@st.composite
def api_docs(draw) -> dict:
    ids = draw(st.lists(st.one_of(st.text(min_size=1, max_size=4), st.integers(0, 50).map(str)),
                        min_size=1, max_size=8, unique=True))
    doc = {}
    for node_id in ids:
        cls = draw(st.sampled_from(CLASSES) | st.text(max_size=8))
        ndef = REGISTRY.get(cls)
        names = list(ndef.inputs) if ndef is not None else []
        inputs = {}
        for name in draw(st.lists(st.sampled_from(names) if names else st.text(max_size=6), max_size=6)):
            inputs[name] = draw(link_to(ids) | values)
        entry = {"class_type": cls, "inputs": inputs}
        if draw(st.booleans()):
            entry["_meta"] = draw(st.just({"title": "t"}) | values)
        doc[node_id] = draw(st.just(entry) | values) if draw(st.integers(0, 9)) == 0 else entry
    return doc


# -- YAML ----------------------------------------------------------------------------------
@st.composite
def yaml_docs(draw) -> dict:
    ids = draw(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=6, unique=True))
    nodes = {}
    for node_id in ids:
        cls = draw(st.sampled_from(CLASSES) | st.text(max_size=6))
        ndef = REGISTRY.get(cls)
        names = list(ndef.inputs) if ndef is not None else ["x"]
        entry = {"type": cls}
        for name in draw(st.lists(st.sampled_from(names + ["inputs", "title", "meta"]), max_size=5)):
            other = draw(st.sampled_from(ids))
            entry[name] = draw(st.one_of(
                values, st.just(other), st.just(f"{other}.0"), st.just(f"{other}.MODEL"),
                st.builds(lambda o, out: {"from": o, "output": out}, st.just(other), scalars),
                link_to(ids)))
        nodes[node_id] = entry
    doc = {"nodes": nodes}
    if draw(st.booleans()):
        doc[draw(st.sampled_from(["version", "description", "extra"]))] = draw(values)
    return doc


def _yaml_text(doc, style) -> str:
    return yaml.safe_dump(doc, default_flow_style=style, allow_unicode=True, sort_keys=False)


YAML_INSERTS = ["base: &b {type: EmptyImage}\n", "  c: *b\n", "  <<: *b\n", "x: &a [1, 2]\ny: [*a, *a]\n",
                "  z: !!python/object:os.system {}\n", "\t", ": :", "- - -\n", "[" * 300, "{" * 70 + "}" * 70,
                "nodes:\n", "  a: {type: EmptyImage}\n", "\x00", "%YAML 1.1\n---\n", "--- !!set\n"]


@st.composite
def yaml_texts(draw) -> str:
    base = draw(yaml_docs() | st.sampled_from(CORPUS["yaml"]).flatmap(lambda d: mutated(d)))
    text = _yaml_text(base, draw(st.sampled_from([None, True, False])))
    for _ in range(draw(st.integers(0, 2))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(YAML_INSERTS) | st.text(max_size=4)) + text[at:]
    return text


# -- UI JSON -------------------------------------------------------------------------------
@st.composite
def ui_graph(draw, types: list, depth: int) -> dict:
    n = draw(st.integers(0, 6))
    ids = list(range(1, n + 1)) + ([-10, -20] if depth else [])
    link_ids = list(range(1, draw(st.integers(0, 8)) + 1))
    links = []
    for lid in link_ids:
        row = [lid, draw(st.sampled_from(ids or [1])), draw(st.integers(0, 2)), draw(st.sampled_from(ids or [1])),
               draw(st.integers(0, 2)), draw(st.sampled_from(["*", "IMAGE", "MODEL", "INT", "LATENT", None]))]
        links.append(row if not depth else dict(zip(("id", "origin_id", "origin_slot", "target_id",
                                                     "target_slot", "type"), row)))
    nodes = []
    for node_id in range(1, n + 1):
        kind = draw(st.sampled_from(types))
        ndef = REGISTRY.get(kind)
        names = list(ndef.inputs) if ndef is not None else ["value"]
        inputs = [{"name": draw(st.sampled_from(names)), "type": draw(st.sampled_from(["*", "IMAGE", "INT"])),
                   "link": draw(st.sampled_from(link_ids + [None]) if link_ids else st.none()),
                   **({"widget": {"name": draw(st.sampled_from(names))}} if draw(st.booleans()) else {})}
                  for _ in range(draw(st.integers(0, 3)))]
        node = {"id": node_id, "type": kind, "mode": draw(st.sampled_from([0, 0, 2, 4])), "inputs": inputs,
                "outputs": [{"name": "OUT", "type": draw(st.sampled_from(["*", "IMAGE", "INT"]))}],
                "widgets_values": draw(st.lists(scalars, max_size=6))}
        if draw(st.integers(0, 4)) == 0:
            node["properties"] = {"proxyWidgets": draw(st.lists(st.lists(scalars, max_size=3), max_size=3))}
        nodes.append(node)
    graph = {"nodes": nodes, "links": links}
    if depth:
        graph["inputs"] = [{"name": "value", "type": "*", "linkIds": link_ids[:1]}]
        graph["outputs"] = [{"name": "out", "type": "*", "linkIds": link_ids[-1:]}]
    return graph


@st.composite
def ui_docs(draw) -> dict:
    sub_ids = draw(st.lists(st.sampled_from(["s1", "s2", "s3"]), max_size=3, unique=True))
    types = CLASSES[:12] + ["SaveImage", "EmptyImage", "PreviewImage"] + FRONTEND + sub_ids + ["Junk"]
    doc = draw(ui_graph(types, 0))
    doc["version"] = 0.4
    if sub_ids:
        subs = []
        for sid in sub_ids:
            sub = draw(ui_graph(types, 1))
            sub.update(id=sid, name=f"sub {sid}")
            subs.append(sub)
        doc["definitions"] = {"subgraphs": subs}
    return doc


# -- mutation of real documents -------------------------------------------------------------
HOSTILE = st.one_of(values, st.just({}), st.just([]), st.just(None), st.just("x"), st.just([None]),
                    st.just([[1, 2, 3, 4, 5, "x"]]), st.just({"id": [1]}))


@st.composite
def mutated(draw, doc):
    """``doc`` with 1..4 random places replaced, deleted or deepened."""
    doc = json.loads(json.dumps(doc))  # a private copy
    for _ in range(draw(st.integers(1, 4))):
        parent, key = None, None
        node = doc
        for _ in range(draw(st.integers(0, 6))):  # walk down a random path
            if isinstance(node, dict) and node:
                parent, key = node, draw(st.sampled_from(sorted(node, key=str)))
            elif isinstance(node, list) and node:
                parent, key = node, draw(st.integers(0, len(node) - 1))
            else:
                break
            node = parent[key]
        if parent is None:
            continue
        action = draw(st.integers(0, 3))
        if action == 0 and isinstance(parent, dict):
            del parent[key]
        elif action == 1:
            parent[key] = deep(parent[key], draw(st.integers(1, 100)))
        else:
            parent[key] = copy.deepcopy(draw(HOSTILE))  # st.just() hands out one shared object
    return doc


# -- bytes and PNGs --------------------------------------------------------------------------
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@st.composite
def pngs(draw) -> bytes:
    prompt = json.dumps(draw(api_docs() | st.sampled_from(CORPUS["api"])), allow_nan=True).encode()
    key = draw(st.sampled_from([b"prompt", b"workflow", b"parameters", b""]))
    chunks = [_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))]
    form = draw(st.integers(0, 3))
    if form == 0:
        chunks.append(_chunk(b"tEXt", key + b"\0" + prompt))
    elif form == 1:
        chunks.append(_chunk(b"zTXt", key + b"\0\0" + zlib.compress(prompt)))
    elif form == 2:
        chunks.append(_chunk(b"iTXt", key + b"\0\1\0\0\0" + zlib.compress(prompt)))
    else:
        chunks.append(_chunk(draw(st.sampled_from([b"tEXt", b"zTXt", b"iTXt"])), draw(st.binary(max_size=40))))
    chunks.append(_chunk(b"IEND", b""))
    data = b"\x89PNG\r\n\x1a\n" + b"".join(chunks)
    if draw(st.booleans()):  # cut or corrupt it somewhere
        at = draw(st.integers(8, len(data)))
        data = data[:at] + draw(st.binary(max_size=8))
    return data


# -- the cases -------------------------------------------------------------------------------
def _dumps(doc) -> str:
    return json.dumps(doc, allow_nan=True)


cases = st.one_of(
    api_docs().map(lambda d: ("json", _dumps(d).encode())),
    st.sampled_from(CORPUS["api"]).flatmap(mutated).map(lambda d: ("json", _dumps(d).encode())),
    yaml_texts().map(lambda t: ("yaml", t.encode("utf-8", "surrogatepass"))),
    ui_docs().map(lambda d: ("json", _dumps(d).encode())),
    ui_docs().flatmap(mutated).map(lambda d: ("json", _dumps(d).encode())),
    st.sampled_from(CORPUS["ui"]).flatmap(mutated).map(lambda d: ("json", _dumps(d).encode())),
    pngs().map(lambda b: ("png", b)),
    st.binary(max_size=64).map(lambda b: ("yaml", b)),
)


def check_case(kind: str, data: bytes, folder: Path, env: Environment) -> str:
    """Load and validate one generated file; the outcome's name. Anything but a clean error raises."""
    path = folder / f"case.{kind}"
    path.write_bytes(data)
    try:
        wf = Workflow.load(path, REGISTRY)
    except WorkflowError as exc:
        assert exc.source.startswith(str(path)), exc.format()  # the error names the file
        return "refused"
    try:
        validate(wf, REGISTRY, env)
        outcome = "valid"
    except ValidationError:
        outcome = "invalid"
    for write in (lambda: wf.to_api(REGISTRY), lambda: wf.to_yaml(REGISTRY)):
        try:
            written = write()
        except WorkflowError:
            continue
        text = written if isinstance(written, str) else json.dumps(written, allow_nan=True)
        Workflow.loads(text, "again", REGISTRY)  # what was written reads back
    return outcome


def check_cli(kind: str, data: bytes, folder: Path) -> int:
    """``latentgraph validate`` and ``convert`` in-process: exit 0 or 1, never an internal error."""
    path = folder / f"cli.{kind}"
    path.write_bytes(data)
    out = folder / "converted.yaml"
    codes = []
    for argv in (["validate", str(path), "--no-plugins", "--models-dir", str(folder / "models"),
                  "--input-dir", str(folder / "input")],
                 ["convert", str(path), "--no-plugins", "--to", "yaml", "-o", str(out)]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            codes.append(cli.main(argv))
        text = err.getvalue()
        assert codes[-1] in (0, 1) and "internal error" not in text and "Traceback" not in text, text
    return max(codes)


FUZZ = settings(deadline=None, derandomize=True, database=None, max_examples=2000,
                suppress_health_check=list(HealthCheck))


@FUZZ
@given(cases)
def test_generated_workflow_files_load_cleanly(case):
    with tempfile.TemporaryDirectory() as tmp:
        env = Environment(models_dir=Path(tmp) / "models", input_dir=Path(tmp) / "input")
        assert check_case(*case, Path(tmp), env) in ("refused", "invalid", "valid")


@settings(FUZZ, max_examples=150)
@given(cases)
def test_generated_workflow_files_through_the_cli(case):
    with tempfile.TemporaryDirectory() as tmp:
        assert check_cli(*case, Path(tmp)) in (0, 1)


def test_the_generators_reach_every_outcome():
    """The fuzzer is not only producing garbage: some cases load, some validate."""
    from hypothesis import find

    with tempfile.TemporaryDirectory() as tmp:
        env = Environment(models_dir=Path(tmp) / "models", input_dir=Path(tmp) / "input")
        for wanted in ("refused", "invalid", "valid"):
            found = find(cases, lambda c, w=wanted: check_case(*c, Path(tmp), env) == w,
                         settings=settings(FUZZ, max_examples=5000))  # valid ones are ~0.4% of cases
            assert found is not None

"""Make tests/fixtures/subgraphs: workflows with subgraphs, each with the API prompt that
ComfyUI's own frontend (comfyui-frontend-package, in headless Chromium, served by
`latentgraph serve`) makes of it. Run from the repository root:

    .venv/bin/python tools/make_subgraph_fixtures.py

Needs /usr/bin/chromium, playwright and the frontend extra (pip install -e '.[frontend]' playwright).
Subgraphs are built in the browser with the frontend's own "convert to subgraph" from the
default template (tests/fixtures/comfy_workflows/default.ui.json) and saved as its Save button
saves; variants (several instances, bypass, mute, proxyWidgets, schema 1, ...) are edits of
that save. For every <name>.ui.json written here, <name>.api.json is what the frontend's
graphToPrompt made of exactly that file after loading it.
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "fixtures" / "subgraphs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]

# Built in the page: the frontend's convertToSubgraph on the default template.
BUILD_JS = """async ([wf, kinds, nestedKinds]) => {
  const app = window.app;
  const save = async () => JSON.stringify((await app.graphToPrompt()).workflow);
  const result = {};
  // one subgraph around the sampler, the latent and the decoder; the user sets its promoted seed
  await app.loadGraphData(wf);
  let g = app.graph;
  let inst = g.convertToSubgraph(new Set(g.nodes.filter(n => kinds.includes(n.type)))).node;
  const seed = inst.widgets.find(w => w.name === 'seed');
  seed.value = 4242;
  result.basic = await save();
  result.schema1 = JSON.stringify(g.asSerialisable());
  // nested: the two prompts in a subgraph, then that and the sampler stage in another
  await app.loadGraphData(wf);
  g = app.graph;
  const prompts = g.convertToSubgraph(new Set(g.nodes.filter(n => n.type === 'CLIPTextEncode'))).node;
  prompts.title = 'Prompts';
  const outer = g.convertToSubgraph(new Set([prompts, ...g.nodes.filter(n => nestedKinds.includes(n.type))])).node;
  outer.title = 'Generate';
  result.nested = await save();
  return JSON.stringify(result);
}"""

CONVERT_JS = """async (wfs) => {
  const out = [];
  for (const wf of wfs) {
    await window.app.loadGraphData(wf);
    out.push((await window.app.graphToPrompt()).output);
  }
  return JSON.stringify(out);
}"""


def _node(graph: dict, node_id) -> dict:
    return next(n for n in graph["nodes"] if str(n["id"]) == str(node_id))


def _instance(wf: dict) -> dict:
    ids = {s["id"] for s in wf["definitions"]["subgraphs"]}
    return next(n for n in wf["nodes"] if n["type"] in ids)


def _next_link(wf: dict) -> int:
    ids = [link[0] if isinstance(link, list) else link["id"] for link in wf["links"]]
    for sub in wf["definitions"]["subgraphs"]:
        ids += [link["id"] for link in sub["links"]]
    return max(ids) + 1


def nested_variants(nested: dict) -> dict[str, dict]:
    """Edits of the frontend's own save of the nested subgraphs."""
    out = {}
    outer_def = next(s for s in nested["definitions"]["subgraphs"] if any(
        n["type"] == "KSampler" for n in s["nodes"]))
    inner_id = next(n["id"] for n in outer_def["nodes"] if n["type"] not in ("KSampler", "VAEDecode", "EmptyLatentImage"))
    sampler_id = next(n["id"] for n in outer_def["nodes"] if n["type"] == "KSampler")
    # the inner instance (inside the outer definition) holds its own prompt texts
    wf = copy.deepcopy(nested)
    d = next(s for s in wf["definitions"]["subgraphs"] if s["id"] == outer_def["id"])
    _node(d, inner_id)["widgets_values"] = ["blurry", "a red circle on a blue background"]
    out["nested_values"] = wf
    # the outer instance shows the inner instance's promoted text and the sampler's seed
    wf = copy.deepcopy(nested)
    outer = _instance(wf)
    outer["properties"]["proxyWidgets"] = [[str(inner_id), "text"], [str(sampler_id), "seed"]]
    outer["widgets_values"] = ["lowres", 5]
    out["nested_proxy"] = wf
    return out


def variants(basic: dict) -> dict[str, dict]:
    """Edits of the frontend's own save of the basic subgraph."""
    out = {}
    inst = _instance(basic)
    sub = basic["definitions"]["subgraphs"][0]
    inner_sampler = next(n for n in sub["nodes"] if n["type"] == "KSampler")

    # two instances of one definition, each with its own promoted seed, each saved by its own SaveImage
    two = copy.deepcopy(basic)
    first = _instance(two)
    second = copy.deepcopy(first)
    second["id"] = max(n["id"] for n in two["nodes"]) + 1
    second["widgets_values"] = [777]
    second["pos"] = [first["pos"][0], first["pos"][1] + 700]
    save = copy.deepcopy(next(n for n in two["nodes"] if n["type"] == "SaveImage"))
    save["id"] = second["id"] + 1
    save["widgets_values"] = ["second"]
    lid = _next_link(two)
    for inp in second["inputs"]:
        src = next(link for link in two["links"] if link[0] == inp["link"])
        two["links"].append([lid, src[1], src[2], second["id"], src[4], src[5]])
        _node(two, src[1])["outputs"][src[2]]["links"].append(lid)
        inp["link"] = lid
        lid += 1
    two["links"].append([lid, second["id"], 0, save["id"], 0, "IMAGE"])
    second["outputs"][0]["links"] = [lid]
    save["inputs"][0]["link"] = lid
    two["nodes"] += [second, save]
    two["last_node_id"], two["last_link_id"] = save["id"], lid
    out["two_instances"] = two

    # the sampler inside is bypassed: the decoder takes the empty latent
    bypass_inside = copy.deepcopy(basic)
    _node(bypass_inside["definitions"]["subgraphs"][0], inner_sampler["id"])["mode"] = 4
    out["bypass_inside"] = bypass_inside

    for name, mode in (("muted_instance", 2), ("bypassed_instance", 4)):
        wf = copy.deepcopy(basic)
        _instance(wf)["mode"] = mode
        out[name] = wf

    # the template packages' form: properties.proxyWidgets names the inner widgets the instance shows
    for name, values in (("proxy_widgets_empty", []), ("proxy_widgets_values", [99, 333])):
        wf = copy.deepcopy(basic)
        sub_inst = _instance(wf)
        empty = next(n for n in wf["definitions"]["subgraphs"][0]["nodes"] if n["type"] == "EmptyLatentImage")
        sub_inst["properties"]["proxyWidgets"] = [[str(inner_sampler["id"]), "seed"], [str(empty["id"]), "width"]]
        sub_inst["widgets_values"] = values
        out[name] = wf

    # a second promoted input (steps) and values shorter than the widgets: the rest keep their own
    steps = copy.deepcopy(basic)
    ssub = steps["definitions"]["subgraphs"][0]
    lid = _next_link(steps)
    ssub["inputs"].append({"id": "5e1f0c1e-0000-4000-8000-00000000a001", "name": "steps", "type": "INT",
                           "linkIds": [lid], "pos": [0, 0]})
    sampler = _node(ssub, inner_sampler["id"])
    sampler["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": lid})
    ssub["links"].append({"id": lid, "origin_id": -10, "origin_slot": len(ssub["inputs"]) - 1,
                          "target_id": sampler["id"], "target_slot": len(sampler["inputs"]) - 1, "type": "INT"})
    steps["last_link_id"] = lid
    ssub["state"]["lastLinkId"] = lid
    _instance(steps)["widgets_values"] = [31337, 9]
    out["two_promoted"] = copy.deepcopy(steps)
    _instance(steps)["widgets_values"] = [31337]
    out["short_values"] = steps

    # a PrimitiveNode outside feeds the instance's promoted seed input
    prim = copy.deepcopy(basic)
    pinst = _instance(prim)
    psub = prim["definitions"]["subgraphs"][0]
    slot = next(i for i, x in enumerate(psub["inputs"]) if x["name"] == "seed")
    lid, pid = _next_link(prim), max(n["id"] for n in prim["nodes"]) + 1
    prim["nodes"].append({"id": pid, "type": "PrimitiveNode", "pos": [0, 0], "size": [210, 82], "flags": {},
                          "order": 0, "mode": 0, "inputs": [],
                          "outputs": [{"name": "INT", "type": "INT", "widget": {"name": "seed"}, "links": [lid]}],
                          "title": "seed", "properties": {"Run widget replace on values": False},
                          "widgets_values": [5555, "fixed"]})
    pinst["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": lid})
    prim["links"].append([lid, pid, 0, pinst["id"], slot, "INT"])
    prim["last_node_id"], prim["last_link_id"] = pid, lid
    out["primitive_into_instance"] = prim

    # a Reroute node inside the subgraph, between the sampler and the decoder
    rr = copy.deepcopy(basic)
    rsub = rr["definitions"]["subgraphs"][0]
    decode = next(n for n in rsub["nodes"] if n["type"] == "VAEDecode")
    link = next(x for x in rsub["links"] if x["target_id"] == decode["id"] and x["target_slot"] == 0)
    lid, rid = _next_link(rr), max(n["id"] for n in rsub["nodes"]) + 100
    rsub["nodes"].append({"id": rid, "type": "Reroute", "pos": [0, 0], "size": [75, 26], "flags": {}, "order": 0,
                          "mode": 0, "inputs": [{"name": "", "type": "*", "link": link["id"]}],
                          "outputs": [{"name": "", "type": "LATENT", "links": [lid]}],
                          "properties": {"showOutputText": False, "horizontal": False}})
    rsub["links"].append({"id": lid, "origin_id": rid, "origin_slot": 0, "target_id": decode["id"],
                          "target_slot": 0, "type": "LATENT"})
    link["target_id"], link["target_slot"] = rid, 0
    decode["inputs"][0]["link"] = lid
    for n in rsub["nodes"]:
        for o in n.get("outputs") or []:
            o["links"] = [lid if x == link["id"] and n["type"] != "KSampler" else x for x in o.get("links") or []]
    rr["last_link_id"] = lid
    out["reroute_inside"] = rr
    return out


def main() -> int:
    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT))
    from latentgraph.server import wait_until_listening

    default = json.loads((ROOT / "tests" / "fixtures" / "comfy_workflows" / "default.ui.json").read_text())
    home = Path(tempfile.mkdtemp(prefix="lg-fixtures-"))
    (home / "user" / "default").mkdir(parents=True)
    (home / "user" / "default" / "comfy.settings.json").write_text(json.dumps({"Comfy.TutorialCompleted": True}))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "latentgraph", "serve", "--port", str(port), "--frontend", "auto",
                             "--user-dir", str(home / "user"), "--models-dir", str(home / "models"),
                             "--output-dir", str(home / "output"), "--input-dir", str(home / "input")],
                            stdout=open(home / "serve.log", "w"), stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_until_listening(port, process=proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.app.api && window.app.api.clientId",
                                   timeout=120_000)
            built = json.loads(page.evaluate(BUILD_JS, [default, ["KSampler", "VAEDecode", "EmptyLatentImage"],
                                                        ["KSampler", "VAEDecode", "EmptyLatentImage"]]))
            files = {name: json.loads(text) for name, text in built.items()}
            files.update(variants(files["basic"]))
            files.update(nested_variants(files["nested"]))
            names = sorted(files)
            prompts = json.loads(page.evaluate(CONVERT_JS, [files[n] for n in names]))
            browser.close()
    finally:
        proc.terminate()
        proc.wait(10)
    OUT.mkdir(parents=True, exist_ok=True)
    for name, prompt in zip(names, prompts):
        (OUT / f"{name}.ui.json").write_text(json.dumps(files[name], indent=1) + "\n")
        (OUT / f"{name}.api.json").write_text(json.dumps(prompt, indent=2) + "\n")
        print(f"{name}: {len(files[name]['nodes'])} UI nodes -> {len(prompt)} API nodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Converting and validating a 300-node ComfyUI UI-format workflow (goal: under 50 ms).

Two workflows of 300 nodes each are generated: a flat one (one checkpoint loader, 49 txt2img
stages of six nodes, five Notes: 295 nodes after conversion) and one built from a subgraph (one
definition of five nodes, instanced 50 times, each instance feeding its own SaveImage: 101 nodes
on the canvas, 301 after flattening). For each, the time from the JSON text to a validated plan is measured, split into
JSON parsing, UI -> API conversion, and loading + validation; the same prompt given as API JSON
is measured beside it, so the cost of the conversion itself shows as a ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid

from latentgraph.graph.env import Environment
from latentgraph.graph.ui_format import ui_to_api
from latentgraph.graph.validate import validate
from latentgraph.graph.workflow import Workflow
from latentgraph.nodes import create_registry

CKPT = "latentgraph-shapes.safetensors"


class _Builder:
    def __init__(self):
        self.nodes: list[dict] = []
        self.links: list = []
        self.next_node = 1
        self.next_link = 1

    def add(self, kind: str, inputs=(), outputs=(), widgets=None, **extra) -> dict:
        node = {"id": self.next_node, "type": kind, "pos": [0, 0], "size": [300, 100], "flags": {}, "order": 0,
                "mode": 0, "inputs": [{"name": n, "type": t, "link": None} for n, t in inputs],
                "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
                "properties": {"Node name for S&R": kind}, "widgets_values": widgets or [], **extra}
        self.next_node += 1
        self.nodes.append(node)
        return node

    def link(self, src: dict, slot: int, dst: dict, name: str, objects: bool = False) -> None:
        index = next(i for i, x in enumerate(dst["inputs"]) if x["name"] == name)
        ltype = src["outputs"][slot]["type"] if src["id"] > 0 else dst["inputs"][index]["type"]
        lid = self.next_link
        self.next_link += 1
        if objects:
            self.links.append({"id": lid, "origin_id": src["id"], "origin_slot": slot, "target_id": dst["id"],
                               "target_slot": index, "type": ltype})
        else:
            self.links.append([lid, src["id"], slot, dst["id"], index, ltype])
        if src["id"] > 0:
            src["outputs"][slot]["links"].append(lid)
        dst["inputs"][index]["link"] = lid


def _stage(b: _Builder, model_src, clip_src, vae_src, i: int, objects: bool = False):
    """CLIPTextEncode x2, EmptyLatentImage, KSampler, VAEDecode; returns the decoder."""
    pos = b.add("CLIPTextEncode", [("clip", "CLIP")], ["CONDITIONING"], [f"a red circle number {i}"])
    neg = b.add("CLIPTextEncode", [("clip", "CLIP")], ["CONDITIONING"], [""])
    lat = b.add("EmptyLatentImage", [], ["LATENT"], [64, 64, 1])
    ks = b.add("KSampler", [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                            ("latent_image", "LATENT")], ["LATENT"], [i, "randomize", 20, 5.0, "euler", "normal", 1.0])
    dec = b.add("VAEDecode", [("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"])
    for node, name in ((pos, "clip"), (neg, "clip")):
        b.link(*clip_src, node, name, objects)
    b.link(*model_src, ks, "model", objects)
    b.link(pos, 0, ks, "positive", objects)
    b.link(neg, 0, ks, "negative", objects)
    b.link(lat, 0, ks, "latent_image", objects)
    b.link(ks, 0, dec, "samples", objects)
    b.link(*vae_src, dec, "vae", objects)
    return dec


def flat_workflow(stages: int = 49, notes: int = 5) -> dict:
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", [], ["MODEL", "CLIP", "VAE"], [CKPT])
    for i in range(stages):
        dec = _stage(b, (ckpt, 0), (ckpt, 1), (ckpt, 2), i)
        save = b.add("SaveImage", [("images", "IMAGE")], [], [f"stage{i}"])
        b.link(dec, 0, save, "images")
    for i in range(notes):
        b.add("Note", [], [], [f"note {i}"])
    return {"last_node_id": b.next_node - 1, "last_link_id": b.next_link - 1, "nodes": b.nodes, "links": b.links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def subgraph_workflow(instances: int = 50) -> dict:
    inner = _Builder()
    io_in = {"id": -10, "outputs": [{"type": t, "links": []} for t in ("MODEL", "CLIP", "VAE")]}
    dec = _stage(inner, (io_in, 0), (io_in, 1), (io_in, 2), 0, objects=True)
    lid = inner.next_link
    inner.links.append({"id": lid, "origin_id": dec["id"], "origin_slot": 0, "target_id": -20, "target_slot": 0,
                        "type": "IMAGE"})
    dec["outputs"][0]["links"].append(lid)
    sub_id = str(uuid.UUID(int=1))
    definition = {
        "id": sub_id, "version": 1, "name": "txt2img stage", "revision": 0, "config": {},
        "state": {"lastNodeId": inner.next_node, "lastLinkId": lid, "lastGroupId": 0, "lastRerouteId": 0},
        "inputNode": {"id": -10, "bounding": [0, 0, 120, 80]}, "outputNode": {"id": -20, "bounding": [900, 0, 120, 40]},
        "inputs": [{"id": str(uuid.UUID(int=10 + i)), "name": n, "type": t,
                    "linkIds": [x["id"] for x in inner.links if x["origin_id"] == -10 and x["origin_slot"] == i]}
                   for i, (n, t) in enumerate((("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")))],
        "outputs": [{"id": str(uuid.UUID(int=20)), "name": "IMAGE", "type": "IMAGE", "linkIds": [lid]}],
        "widgets": [], "nodes": inner.nodes, "groups": [], "links": inner.links, "extra": {}}
    b = _Builder()
    ckpt = b.add("CheckpointLoaderSimple", [], ["MODEL", "CLIP", "VAE"], [CKPT])
    for i in range(instances):
        inst = b.add(sub_id, [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE")], ["IMAGE"], [])
        for slot, name in enumerate(("model", "clip", "vae")):
            b.link(ckpt, slot, inst, name)
        save = b.add("SaveImage", [("images", "IMAGE")], [], [f"stage{i}"])
        b.link(inst, 0, save, "images")
    return {"last_node_id": b.next_node - 1, "last_link_id": b.next_link - 1, "nodes": b.nodes, "links": b.links,
            "groups": [], "definitions": {"subgraphs": [definition]}, "config": {}, "extra": {}, "version": 0.4}


def _time(fn, repeat: int) -> list[float]:
    fn()  # warm
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    registry = create_registry()
    env = Environment(models_dir="models")
    print(f"{'workflow':<10} {'UI nodes':>8} {'API nodes':>9} {'parse':>7} {'convert':>8} {'validate':>9} "
          f"{'UI total':>9} {'p95':>7} {'API total':>10} {'ratio':>6}")
    worst = 0.0
    for name, data in (("flat", flat_workflow()), ("subgraph", subgraph_workflow())):
        text = json.dumps(data)
        count = len(data["nodes"]) + sum(len(s["nodes"]) for s in (data.get("definitions") or {}).get("subgraphs", []))
        prompt = ui_to_api(json.loads(text), registry)
        api_text = json.dumps(prompt)
        parsed = json.loads(text)
        parse = statistics.median(_time(lambda: json.loads(text), args.repeat))
        convert = statistics.median(_time(lambda: ui_to_api(parsed, registry), args.repeat))
        wf_api = Workflow.from_api(prompt)
        check = statistics.median(_time(lambda: validate(wf_api, registry, env), args.repeat))
        total = _time(lambda: validate(Workflow.loads(text, name, registry), registry, env), args.repeat)
        api_total = _time(lambda: validate(Workflow.loads(api_text, name, registry), registry, env), args.repeat)
        med, p95 = statistics.median(total), sorted(total)[int(0.95 * len(total)) - 1]
        worst = max(worst, med)
        print(f"{name:<10} {count:>8} {len(prompt):>9} {parse:>6.1f}  {convert:>7.1f}  {check:>8.1f}  "
              f"{med:>8.1f}  {p95:>6.1f}  {statistics.median(api_total):>9.1f}  "
              f"{med / statistics.median(api_total):>5.2f}x")
    print(f"goal: UI JSON text -> validated workflow under 50 ms for 300 nodes; worst median {worst:.1f} ms "
          f"({'met' if worst < 50 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

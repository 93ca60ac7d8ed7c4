"""Real ComfyUI custom-node packs on latentgraph: which load, and how many of their nodes run.

    .venv/bin/python bench/packs.py PACKS_DIR [--top 20] [--json out.json] [--timeout 300]

PACKS_DIR holds packs checked out as tools/fetch_packs.md says (one folder per repository,
named as the repository). Packs are taken in the order of tools/packs.json (most installed
first); each is loaded alone in a child process of its own (so one pack's imports, globals and
crashes never reach another) against latentgraph's compatibility layer, then every node it
registered is run once on sample inputs:

- widgets get their defaults (a combo its first choice); an input that must be linked
  (``forceInput``) or takes anything (``*``) gets a primitive node's value (a string for ``*``);
- IMAGE, MASK and LATENT sockets get a 64 x 64 picture (two colours blended by the mask), a mask
  ramping from 0 to 1 at its edges (SolidMask through FeatherMask) and an empty latent;
  MODEL, CLIP, VAE and CONDITIONING come from the shipped demo model (latentgraph-shapes), or
  from ``--checkpoint FILE`` (ComfyUI does not load the demo model: for --compare make one both
  load with tools/oracle/make_compare_checkpoint.py);
- a required socket of any other type (a pack's own pipe types, UPSCALE_MODEL, ...) makes the
  node "skipped": it cannot run without a graph of that pack's own nodes.

Per pack it prints loaded / partly loaded / failed (with the reason), the nodes registered, and
the nodes that ran, failed (with the first error) or were skipped. "Partly loaded": the pack
imported but registered fewer nodes than the reference: with --compare, the nodes the ComfyUI
server registers for the same pack (its /object_info ``python_module``); otherwise, or when that
server lacks the pack, the literal keys of the pack's NODE_CLASS_MAPPINGS in its source (which
also counts nodes a pack registers only under a setting, or files it never imports). ComfyUI
names a pack asked for and the layer lacks are listed as "missing" either way. Each output of a node that ran is summarised
by ``LgDigest`` (bench/pack_digest: shapes, sums, first values), kept in --json.

``--compare URL`` also sends every prompt that ran or failed here to a ComfyUI server at URL that
has the same packs and bench/pack_digest in its custom_nodes (and latentgraph-shapes.safetensors
in its checkpoints) and compares its summaries with ours: same (shapes and strings equal,
numbers within 1e-3 relative), different (the first difference), failed on ComfyUI, same
failure (both failed in the same node with the same exception class), failed differently, ran
on ComfyUI only, or inputs failed on ComfyUI (a sample-input node failed there: not compared).
Nodes that time out here or exit the process are not sent. The ComfyUI side is driven over HTTP
only; tools/oracle/packs_compare.md says how to set it up.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGEST = Path(__file__).resolve().parent / "pack_digest"
SIZE = 64
DEMO = "latentgraph-shapes.safetensors"
CHECKPOINT = [DEMO]  # the checkpoint's file name in the prompts (--checkpoint)
NODE = "1"  # the node under test; a number, as ComfyUI's frontend gives (tinyterra reads int(unique_id))
SOURCES = {  # socket type -> (source node, output index); a node's links name nodes of HELPERS
    # a mask ramping from 0 to 1 at its edges, and an image of two colours blended by it: not flat,
    # so that a node's sums tell more than a flat input's would (both made by core nodes)
    "IMAGE": ({"class_type": "ImageCompositeMasked", "inputs": {
        "destination": ["image_a", 0], "source": ["image_b", 0], "x": 0, "y": 0, "resize_source": False,
        "mask": ["mask", 0]}}, 0),
    "MASK": ({"class_type": "FeatherMask", "inputs": {"mask": ["mask_solid", 0], "left": 16, "top": 8, "right": 0,
                                                       "bottom": 24}}, 0),
    "LATENT": ({"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}}, 0),
    "MODEL": ({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO}}, 0),
    "CLIP": ({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO}}, 1),
    "VAE": ({"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": DEMO}}, 2),
}
INPUT_NODES = {"ckpt", "cond", "image", "mask", "latent", "image_a", "image_b", "mask_solid"}  # ids _link gives
HELPERS = {
    "image_a": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0x3080C0}},
    "image_b": {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1, "color": 0xE0A020}},
    "mask_solid": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": SIZE, "height": SIZE}},
}


def sample_prompt(name: str, info: dict) -> tuple[dict | None, str | None]:
    """A prompt running node ``name`` (its /object_info entry ``info``) on sample inputs, or
    (None, why) when a required input has a type we cannot make or the node never runs."""
    if not info.get("output") and not info.get("output_node"):
        return None, "never runs: no outputs and not an output node (ComfyUI shows it only)"
    prompt: dict = {}
    inputs: dict = {}
    for section in ("required", "optional"):
        for iname, entry in (info["input"].get(section) or {}).items():
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            value = _widget(kind, opts)
            if value is not _NONE:
                inputs[iname] = value
            elif isinstance(kind, str) and (kind in SOURCES or kind == "CONDITIONING"):
                inputs[iname] = _link(prompt, kind)
            elif isinstance(kind, str) and kind in PRIMITIVES and section == "required":  # forceInput, "*"
                node, value = PRIMITIVES[kind]
                prompt[f"prim_{iname}"] = {"class_type": node, "inputs": {"value": value}}
                inputs[iname] = [f"prim_{iname}", 0]
            elif section == "required":
                return None, f"needs a {kind if isinstance(kind, str) else 'combo with no choices'} input"
    prompt[NODE] = {"class_type": name, "inputs": inputs}
    return prompt, None


_NONE = object()


PRIMITIVES = {"STRING": ("PrimitiveString", "a red circle"), "INT": ("PrimitiveInt", 1),
              "FLOAT": ("PrimitiveFloat", 0.5), "BOOLEAN": ("PrimitiveBoolean", True), "*": ("PrimitiveString", "a red circle")}


def _widget(kind, opts: dict):
    if isinstance(kind, list):
        return kind[0] if kind else _NONE
    if kind == "COMBO":
        options = opts.get("options") or []
        return opts.get("default", options[0] if options else _NONE)
    if opts.get("forceInput"):
        return _NONE
    if kind == "INT":
        return int(opts.get("default", opts.get("min", 0)))
    if kind == "FLOAT":
        return float(opts.get("default", opts.get("min", 0.0)))
    if kind == "STRING":
        return str(opts.get("default", ""))
    if kind == "BOOLEAN":
        return bool(opts.get("default", False))
    return _NONE


def _link(prompt: dict, kind: str) -> list:
    if kind == "CONDITIONING":
        _link(prompt, "CLIP")
        prompt["cond"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a red circle", "clip": ["ckpt", 1]}}
        return ["cond", 0]
    node, index = SOURCES[kind]
    key = "ckpt" if node["class_type"] == "CheckpointLoaderSimple" else kind.lower()
    prompt[key] = json.loads(json.dumps(node))
    if key == "ckpt":
        prompt[key]["inputs"]["ckpt_name"] = CHECKPOINT[0]
    for value in list(node["inputs"].values()):
        if isinstance(value, list) and value[0] in HELPERS:
            prompt[value[0]] = json.loads(json.dumps(HELPERS[value[0]]))
        elif isinstance(value, list) and value[0] == "mask":
            _link(prompt, "MASK")
    return [key, index]


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run_one(pack: Path, node_timeout: int, checkpoint: Path | None = None) -> dict:
    """In the child: load ``pack`` alone and run each of its nodes on sample inputs."""
    from latentgraph.graph import Environment, Executor, Workflow
    from latentgraph.nodes import create_registry
    from latentgraph.plugins import load_plugins
    from latentgraph.plugins.api_usage import ScanError, scan

    pack = pack.resolve()
    work = Path(tempfile.mkdtemp(prefix="lg-packs-"))
    # numba's cache=True writes beside the pack's source, keyed by file name, not by module: a
    # cache compiled here (module latentgraph_custom_nodes...) would be read by a ComfyUI run
    os.environ["NUMBA_CACHE_DIR"] = str(work / "numba")
    os.chdir(work)  # packs write to relative paths (WAS: ./ComfyUI/input/...): not into the checkout
    (work / "custom_nodes").mkdir()
    (work / "custom_nodes" / pack.name).symlink_to(pack.resolve(), target_is_directory=True)
    (work / "digest").mkdir()
    if checkpoint is not None:  # MODEL, CLIP and VAE inputs from this file instead of the demo model
        (work / "models" / "checkpoints").mkdir(parents=True)
        (work / "models" / "checkpoints" / checkpoint.name).symlink_to(checkpoint.resolve())
        CHECKPOINT[0] = checkpoint.name
    (work / "digest" / "pack_digest").symlink_to(DIGEST, target_is_directory=True)
    env = Environment(output_dir=work / "output", input_dir=work / "input", temp_dir=work / "temp",
                      models_dir=work / "models", device="cpu")
    registry = create_registry()
    load_plugins(registry, [work / "digest"], entry_points=False, env=env)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # packs print banners at import
        (info,) = load_plugins(registry, [work / "custom_nodes"], entry_points=False, env=env)
    report = {"pack": pack.name, "load_seconds": round(time.perf_counter() - start, 2), "status": info.status,
              "error": info.error, "missing": info.missing, "nodes": len(info.nodes), "ran": [], "failed": {},
              "skipped": {}, "outputs": {}, "prompts": {}, "errors": {}}
    try:
        declared = scan(pack).node_mappings
    except ScanError:
        declared = 0
    report["declared"], report["names"] = declared, sorted(info.nodes)
    if info.status == "loaded" and len(info.nodes) < declared:  # main() judges again against ComfyUI's own list
        report["status"] = "partly loaded"
    executor = Executor(registry, env)
    signal.signal(signal.SIGALRM, _alarm)
    for name in info.nodes:
        prompt, why = sample_prompt(name, registry[name].object_info())
        if prompt is None:
            report["skipped"][name] = why
            continue
        outputs = len(registry[name].outputs)
        for i in range(outputs):  # LgDigest shows each output's summary as UI text
            prompt[f"digest{i}"] = {"class_type": "LgDigest", "inputs": {"value": [NODE, i]}}
        signal.alarm(node_timeout)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                result = executor.run(Workflow.from_api(prompt), targets=[NODE] + [f"digest{i}"
                                                                                     for i in range(outputs)])
            report["ran"].append(name)
            report["prompts"][name] = prompt
            # an output list of no items runs no LgDigest: None, as the ComfyUI side reads it
            report["outputs"][name] = [json.loads(result.outputs[f"digest{i}"]["text"][0])
                                       if f"digest{i}" in result.outputs else None for i in range(outputs)]
        except _Timeout:
            report["failed"][name] = f"timed out after {node_timeout} s"
        except SystemExit as exc:  # rembg calls sys.exit(1) at import when onnxruntime is missing
            report["failed"][name] = f"SystemExit({exc.code}): the node exits the process (not sent to ComfyUI)"
        except Exception as exc:  # noqa: BLE001 - a pack's node may raise anything; record it
            if isinstance(getattr(exc, "exception", None), _Timeout):  # raised inside the node: the executor wrapped it
                report["failed"][name] = f"timed out after {node_timeout} s"
                continue  # not sent to ComfyUI either: it would hold its only worker as long
            report["failed"][name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]
            report["prompts"][name] = prompt  # --compare: does ComfyUI fail the same way?
            report["errors"][name] = _our_failure(exc)
        finally:
            signal.alarm(0)
    return report


def _our_failure(exc: BaseException) -> str:
    """How a prompt failed here, in the form ``_their_failure`` gives ComfyUI's: ``node: Type``
    for a node that raised (the exception's class name, without its module: a pack's module is
    named differently on the two sides), ``invalid: types`` for a prompt refused by validation."""
    from latentgraph.graph.errors import NodeExecutionError, ValidationError

    if isinstance(exc, NodeExecutionError):
        return f"{exc.node_id}: {exc.exception_type.rsplit('.', 1)[-1]}"
    if isinstance(exc, ValidationError):
        return "invalid: " + _error_types(exc.report.as_comfy())
    return f"?: {type(exc).__name__}"


def _error_types(body: dict) -> str:
    kinds = sorted({e.get("type", "?") for entry in (body.get("node_errors") or {}).values()
                    for e in entry.get("errors", [])})
    return ", ".join(kinds) or (body.get("error") or {}).get("type", "?")


def _their_failure(entry: dict) -> tuple[str, str]:
    """(key, message) for a prompt that failed on ComfyUI: key as ``_our_failure`` makes it."""
    if "refused" in entry:
        try:
            body = json.loads(entry["refused"])
        except ValueError:
            return "invalid: ?", entry["refused"][:200]
        return "invalid: " + _error_types(body), json.dumps(body)[:200]
    status = entry.get("failed")
    if isinstance(status, dict):
        for kind, data in status.get("messages", []):
            if kind == "execution_error":
                return (f"{data.get('node_id')}: {str(data.get('exception_type', '?')).rsplit('.', 1)[-1]}",
                        f"{data.get('exception_type')}: {str(data.get('exception_message', '')).strip()}"[:200])
        return "?: ?", str(status)[:200]
    return "?: ?", str(status)[:200]


def comfy_run(url: str, prompt: dict, timeout: float = 300) -> dict:
    """Queue ``prompt`` on the ComfyUI server at ``url``; its history entry once done."""
    import urllib.error

    body = json.dumps({"prompt": prompt, "client_id": "latentgraph-bench"}).encode()
    request = urllib.request.Request(f"{url}/prompt", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            pid = json.load(r)["prompt_id"]
    except urllib.error.HTTPError as exc:
        return {"refused": exc.read().decode("utf-8", "replace")}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"{url}/history/{pid}", timeout=60) as r:
            entry = json.load(r).get(pid)
        if entry and entry.get("status", {}).get("completed") is not None:
            if entry["status"].get("status_str") == "success" or entry.get("outputs"):
                return entry
            return {"failed": entry.get("status", {})}
        time.sleep(0.2)
    with contextlib.suppress(OSError):  # free its worker for the next prompt
        urllib.request.urlopen(urllib.request.Request(f"{url}/interrupt", b"{}", {"Content-Type": "application/json"}),
                               timeout=60).close()
        urllib.request.urlopen(urllib.request.Request(f"{url}/queue", json.dumps({"clear": True}).encode(),
                                                      {"Content-Type": "application/json"}), timeout=60).close()
    return {"failed": f"no answer in {timeout} s"}


def same(ours, theirs, path: str = "") -> str | None:
    """None when two summaries agree (numbers within 1e-3 relative), else where they differ."""
    if isinstance(ours, float) or isinstance(theirs, float):
        if not isinstance(ours, (int, float)) or not isinstance(theirs, (int, float)):
            return f"{path}: {ours!r} vs {theirs!r}"
        if ours != ours or theirs != theirs:  # NaN: the same only as NaN
            return None if ours != ours and theirs != theirs else f"{path}: {ours} vs {theirs}"
        return None if abs(ours - theirs) <= 1e-3 * max(1.0, abs(ours), abs(theirs)) else f"{path}: {ours} vs {theirs}"
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if sorted(ours) != sorted(theirs):
            return f"{path}: keys {sorted(ours)} vs {sorted(theirs)}"
        return next((d for k in ours if (d := same(ours[k], theirs[k], f"{path}.{k}"))), None)
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return f"{path}: {len(ours)} items vs {len(theirs)}"
        return next((d for i, (a, b) in enumerate(zip(ours, theirs)) if (d := same(a, b, f"{path}[{i}]"))), None)
    return None if ours == theirs else f"{path}: {ours!r} vs {theirs!r}"


def compare(report: dict, url: str, timeout: float = 300) -> None:
    """Run each prompt that ran or failed here on ComfyUI; record per node: same, different at
    (the first difference), failed on ComfyUI (ran here), same failure (failed on both sides,
    same node and exception type), failed differently, or ran on ComfyUI only (failed here).
    The ComfyUI summaries are kept in ``comfyui_outputs``."""
    report["comfyui"], report["comfyui_outputs"] = {}, {}
    for name, prompt in report.get("prompts", {}).items():
        entry = comfy_run(url, prompt, timeout)
        ours = report.get("errors", {}).get(name)
        if "outputs" not in entry:
            key, message = _their_failure(entry)
            source = key.split(":")[0]
            if source in INPUT_NODES or source.startswith("prim_"):  # a sample input (the demo checkpoint) failed
                report["comfyui"][name] = f"inputs failed on ComfyUI: {key} ({message})"
            elif ours is None:
                report["comfyui"][name] = f"failed on ComfyUI: {message}"
            elif ours == key:
                report["comfyui"][name] = f"same failure ({key})"
            else:
                report["comfyui"][name] = f"failed differently: here {ours}, on ComfyUI {key} ({message})"
            continue
        count = len(report["outputs"][name]) if name in report.get("outputs", {}) else sum(
            k.startswith("digest") for k in prompt)
        theirs = [json.loads(entry["outputs"].get(f"digest{i}", {}).get("text", ["null"])[0]) for i in range(count)]
        report["comfyui_outputs"][name] = theirs
        if ours is not None:
            report["comfyui"][name] = f"ran on ComfyUI only (failed here: {report['failed'][name]})"
            continue
        diff = same(report["outputs"][name], theirs)
        report["comfyui"][name] = "same" if diff is None else f"different at output{diff}"


_COMFY_NODES: dict[str, dict[str, set]] = {}


def comfy_nodes(url: str) -> dict[str, set]:
    """Pack folder -> the node names the ComfyUI server at ``url`` registers for it (read once)."""
    if url not in _COMFY_NODES:
        with urllib.request.urlopen(f"{url}/object_info", timeout=120) as resp:
            info = json.loads(resp.read())
        packs: dict[str, set] = {}
        for name, entry in info.items():
            module = str(entry.get("python_module", ""))
            if module.startswith("custom_nodes."):
                packs.setdefault(module.split(".", 1)[1], set()).add(name)
        _COMFY_NODES[url] = packs
    return _COMFY_NODES[url]


def judge(report: dict, reference: dict[str, set]) -> None:
    """Loaded whole or partly, against the nodes ComfyUI registers for the pack when it has it."""
    theirs = reference.get(report["pack"])
    if not theirs or report["status"] not in ("loaded", "partly loaded"):
        return
    report["comfyui_nodes"] = len(theirs)
    report["only_comfyui"] = sorted(theirs - set(report.get("names", ())))
    report["status"] = "partly loaded" if report["only_comfyui"] else "loaded"


def _packs(folder: Path, top: int) -> list[Path]:
    listed = json.loads((ROOT / "tools" / "packs.json").read_text())
    found = [folder / e["repo"].split("/")[1] for e in listed]
    return [p for p in found if p.is_dir()][:top]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packs", type=Path, help="folder of packs (tools/fetch_packs.md)")
    parser.add_argument("--top", type=int, default=20, help="how many packs of tools/packs.json (default 20)")
    parser.add_argument("--json", type=Path, help="write every report here")
    parser.add_argument("--timeout", type=int, default=600, help="seconds for one pack (default 600)")
    parser.add_argument("--node-timeout", type=int, default=60, help="seconds for one node (default 60)")
    parser.add_argument("--compare", metavar="URL", help="a ComfyUI server to run the same prompts on")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint for the MODEL, CLIP and VAE inputs (default: "
                        "the demo model); the ComfyUI side needs the same file, same name, in its checkpoints")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.packs, args.node_timeout, args.checkpoint)))
        return 0
    reports = []
    for pack in _packs(args.packs, args.top):
        cmd = [sys.executable, __file__, str(pack), "--one", "--node-timeout", str(args.node_timeout)]
        if args.checkpoint is not None:
            cmd += ["--checkpoint", str(args.checkpoint)]
        try:
            # nothing may download here: a node fetching its model from the hub fails at once
            # instead of spending its time in huggingface_hub's retries (controlnet_aux)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                                  env=dict(os.environ, HF_HUB_OFFLINE="1"))
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            report = json.loads(lines[-1]) if proc.returncode == 0 and lines else {
                "pack": pack.name, "status": "failed", "error": f"the child process exited {proc.returncode}: "
                + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
        except subprocess.TimeoutExpired:
            report = {"pack": pack.name, "status": "failed", "error": f"timed out after {args.timeout} s"}
        if args.compare:
            judge(report, comfy_nodes(args.compare.rstrip("/")))
        if args.compare and report.get("prompts"):
            compare(report, args.compare.rstrip("/"), max(60, 4 * args.node_timeout))
        reports.append(report)
        _print(report)
    loaded = sum(r["status"] == "loaded" for r in reports)
    partly = sum(r["status"] == "partly loaded" for r in reports)
    print(f"\n{len(reports)} packs: {loaded} loaded whole, {partly} partly, {len(reports) - loaded - partly} failed; "
          f"nodes ran {sum(len(r.get('ran', [])) for r in reports)} of "
          f"{sum(r.get('nodes', 0) for r in reports)} registered "
          f"({sum(len(r.get('skipped', {})) for r in reports)} skipped: inputs of the pack's own types)")
    if args.compare:
        verdicts = [v for r in reports for v in r.get("comfyui", {}).values()]
        print(f"compared with ComfyUI: {len(verdicts)} nodes; {_tally(verdicts)}")
    if args.json:
        args.json.write_text(json.dumps(reports, indent=1) + "\n")
    return 0


def _print(r: dict) -> None:
    line = f"{r['pack']:40s} {r['status']:14s}"
    if "nodes" in r:
        line += (f" nodes {r['nodes']:4d}  ran {len(r['ran']):4d}  failed {len(r['failed']):3d}  "
                 f"skipped {len(r['skipped']):3d}  ({r.get('load_seconds', 0):.1f} s to load)")
    print(line, flush=True)
    if r.get("error"):
        print(f"    {r['error']}")
    if "comfyui_nodes" in r:
        print(f"    ComfyUI registers {r['comfyui_nodes']} nodes of this pack"
              + (f"; not here: {', '.join(r['only_comfyui'][:8])}" if r["only_comfyui"] else ""))
    elif r.get("status") == "partly loaded":
        print(f"    its source declares {r['declared']} nodes")
    if r.get("missing"):
        print(f"    missing: {', '.join(r['missing'][:8])}")
    for name, why in list(r.get("failed", {}).items())[:3]:
        print(f"    {name}: {why}")
    if "comfyui" in r:
        print(f"    compared with ComfyUI: {_tally(list(r['comfyui'].values()))}")
        for name, verdict in r["comfyui"].items():
            if verdict != "same" and not verdict.startswith("same failure"):
                print(f"    {name}: {verdict}")


VERDICTS = ("same", "different", "failed on ComfyUI", "same failure", "failed differently", "ran on ComfyUI only",
            "inputs failed on ComfyUI")


def _tally(verdicts: list[str]) -> str:
    counts = {kind: sum(v == kind if kind == "same" else v.startswith(kind) for v in verdicts) for kind in VERDICTS}
    return ", ".join(f"{kind} {n}" for kind, n in counts.items())


if __name__ == "__main__":
    sys.exit(main())

"""Count which of ComfyUI's names custom-node packs use: the table the compatibility layer is
built from, in that order. Run from the repository root:

    .venv/bin/python tools/pack_api_usage.py /work/packs --json docs/comfyui-api-usage.json \\
        --markdown docs/comfyui-api-usage.md

Each subfolder of PACKS_DIR is one pack (tools/fetch_packs.md says how to recreate the folder
from tools/packs.json). Packs are read with :mod:`ast` only (latentgraph.plugins.api_usage);
none of their code runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latentgraph.plugins.api_usage import FEATURES, ScanError, Usage, merge, scan  # noqa: E402

PACKS_JSON = ROOT / "tools" / "packs.json"
MAX_PACKS_JSON_BYTES = 1024 * 1024
FEATURE_TEXT = {
    "v3_api": "uses of `comfy_api.latest` (V3 API) names",
    "v3_nodes": "classes deriving from `io.ComfyNode` (V3 nodes)",
    "comfy_entrypoint": "`comfy_entrypoint` defined (V3 extension)",
    "web_directory": "`WEB_DIRECTORY` set (web extension)",
    "lazy_inputs": "`\"lazy\": True` in an input declaration",
    "check_lazy_status": "`check_lazy_status` defined",
    "expand_returns": "a returned dict with an `\"expand\"` key (node expansion)",
    "graph_builder": "uses of `GraphBuilder` (node expansion)",
    "execution_blocker": "uses of `ExecutionBlocker`",
    "validate_inputs": "`VALIDATE_INPUTS` defined",
    "is_changed": "`IS_CHANGED` defined",
}


def load_pack_list(path: Path = PACKS_JSON) -> dict[str, dict]:
    """tools/packs.json as {folder name: entry}; the folder is the repository's name."""
    size = path.stat().st_size
    if size > MAX_PACKS_JSON_BYTES:
        raise ScanError(f"{path}: {size} bytes is over the budget of {MAX_PACKS_JSON_BYTES} bytes")
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ScanError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(entries, list):
        raise ScanError(f"{path}: expected a list of {{repo, commit, kind}} objects")
    out = {}
    for i, entry in enumerate(entries):
        if not (isinstance(entry, dict) and {"repo", "commit", "kind"} <= entry.keys()
                and isinstance(entry["repo"], str) and entry["repo"].count("/") == 1):
            raise ScanError(f"{path}: entry {i} needs repo (\"owner/name\"), commit and kind")
        out[entry["repo"].split("/")[1]] = entry
    return out


def scan_all(packs_dir: Path) -> tuple[list[Usage], list[str]]:
    """Scan every subfolder; a pack that cannot be scanned is reported, not fatal."""
    usages, failures = [], []
    for folder in sorted(p for p in packs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            usages.append(scan(folder))
        except ScanError as exc:
            failures.append(f"{folder.name}: {exc}")
    return usages, failures


def _top_module(name: str) -> str:
    return name.split(".")[0]


def _table(rows: dict, label: str, limit: int | None = None, optional: bool = False) -> list[str]:
    head = f"| {label} | packs | uses |" + (" only optional in |" if optional else "")
    lines = [head, "|---|---:|---:|" + ("---:|" if optional else "")]
    for name, row in list(rows.items())[:limit]:
        line = f"| `{name}` | {row['packs']} | {row['uses']} |"
        lines.append(line + (f" {row['optional_packs'] or ''} |" if optional else ""))
    return lines


def markdown(usages: list[Usage], failures: list[str], packs: dict[str, dict], top: int = 80) -> str:
    totals = merge(usages)
    lines = [
        "# ComfyUI names used by custom-node packs",
        "",
        f"Measured by `tools/pack_api_usage.py` over {len(usages)} packs (list: `tools/packs.json`; "
        "how to fetch them: `tools/fetch_packs.md`). Each pack's `.py` files are read with `ast`, nothing runs.",
        "A name's **packs** is how many packs use it, **uses** how many times in all (an import counts once, "
        "each reference once). Aliases are resolved (`import comfy.model_management as mm; mm.x` is "
        "`comfy.model_management.x`); names stop two attributes past a class (`server.PromptServer.instance.routes`) "
        "and at a constant (`comfy.samplers.KSampler.SAMPLERS`). **only optional in** counts packs that import "
        "the name only inside `try: ... except ImportError`.",
        "",
        "## Packs scanned",
        "",
        "| pack | kind | commit | .py files | KiB | not parsed | NODE_CLASS_MAPPINGS entries | V3 nodes "
        "| ComfyUI names |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    order = {name: i for i, name in enumerate(packs)}  # tools/packs.json's order, then the others
    for u in sorted(usages, key=lambda u: (order.get(u.pack, len(order)), u.pack.lower())):
        entry = packs.get(u.pack, {})
        repo = entry.get("repo", u.pack)
        commit = entry.get("commit", "?")[:12]
        mapped = f"{u.node_mappings}{'+' if u.mappings_partial else ''}"
        lines.append(f"| {repo} | {entry.get('kind', '?')} | `{commit}` | {u.files} | {u.bytes // 1024} | "
                     f"{len(u.unparsed)} | {mapped} | {u.features['v3_nodes']} | {len(u.names)} |")
    lines += ["", "`+`: some entries are added by code (loops, calls), so the count is a lower bound."]
    if failures:
        lines += ["", "Not scanned:", ""] + [f"- {f}" for f in failures]
    names = totals["names"]
    lines += ["", f"## The {top} most used names", ""] + _table(names, "name", top, optional=True)
    lines += ["", "## Packs covered by the first K names", "",
              "A pack is covered when every name it needs (all but those only imported under "
              "`try: ... except ImportError`) is among the first K of the list above, in its order: how many packs "
              "a compatibility layer that provides exactly those names could load, as far as ComfyUI's names go "
              "(MODEL/CLIP/VAE methods and the packs' own dependencies aside).", "",
              "| K | packs covered | newly covered |", "|---:|---:|---|"]
    for k, covered, new in coverage(usages, names):
        lines.append(f"| {k} | {covered} | {', '.join(new)} |")
    for module in sorted({_top_module(n) for n in names}, key=lambda m: (-_packs_of(usages, m), m)):
        rows = {n: r for n, r in names.items() if _top_module(n) == module}
        lines += ["", f"## `{module}` (used by {_packs_of(usages, module)} packs)", ""]
        lines += _table(rows, "name", optional=True)
    lines += ["", "## MODEL / CLIP / VAE methods and attributes", "",
              "By-name heuristics on values whose type is not known statically (see "
              "`latentgraph/plugins/api_usage.py`): a distinctive name (`set_model_attn1_patch`, "
              "`encode_from_tokens`) counts on any expression; a generic one (`clone`, `encode`, `decode`) "
              "only on a receiver whose name says the type (`model`, `self.clip`, `vae`).", ""]
    lines += _table(totals["methods"], "name")
    lines += ["", "## Features", "", "| feature | packs | count |", "|---|---:|---:|"]
    for key in FEATURES:
        row = totals["features"].get(key, {"packs": 0, "uses": 0})
        lines.append(f"| {FEATURE_TEXT[key]} | {row['packs']} | {row['uses']} |")
    lines += ["", "## V1 node class attributes and hidden inputs", "",
              "Class attributes assigned in a class body, and hidden-input type strings anywhere.", ""]
    lines += _table(totals["node_api"], "name")
    lines += ["", "## Third-party imports", "",
              "Top-level modules imported that are not stdlib, not ComfyUI and not the pack's own files "
              "(module names, not distribution names: `cv2` is opencv-python, `PIL` is pillow).", ""]
    lines += _table(totals["third_party"], "module")
    return "\n".join(lines) + "\n"


def coverage(usages: list[Usage], names: dict, steps=(0, 10, 20, 40, 80, 160, 320, 640)) -> list[tuple]:
    """(K, packs whose needed names are all among the first K, the packs that K adds)."""
    rank = {name: i for i, name in enumerate(names)}
    need = {u.pack: max((rank[n] + 1 for n in u.names if n not in u.optional), default=0) for u in usages}
    rows, seen = [], set()
    for k in sorted({*steps, len(names)}):
        if k > len(names):
            continue
        now = sorted((p for p, n in need.items() if n <= k), key=str.lower)
        rows.append((k, len(now), [p for p in now if p not in seen]))
        seen.update(now)
    return rows


def _packs_of(usages: list[Usage], module: str) -> int:
    return sum(1 for u in usages if any(_top_module(n) == module for n in u.names))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packs_dir", type=Path, help="a folder whose subfolders are packs")
    parser.add_argument("--json", type=Path, help="write every pack's usage and the totals here")
    parser.add_argument("--markdown", type=Path, help="write the tables here")
    parser.add_argument("--packs", type=Path, default=PACKS_JSON, help="repo/commit/kind of each pack")
    parser.add_argument("--top", type=int, default=80, help="rows in the most-used table")
    args = parser.parse_args(argv)
    if not args.packs_dir.is_dir():
        parser.error(f"{args.packs_dir}: not a folder")
    packs = load_pack_list(args.packs) if args.packs.exists() else {}
    usages, failures = scan_all(args.packs_dir)
    for failure in failures:
        print(f"not scanned: {failure}", file=sys.stderr)
    if args.json:
        doc = {"packs": [u.to_json() | {k: packs.get(u.pack, {}).get(k) for k in ("repo", "commit", "kind")}
                         for u in usages], "failures": failures, "totals": merge(usages)}
        args.json.write_text(json.dumps(doc, indent=1, sort_keys=False) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(markdown(usages, failures, packs, args.top), encoding="utf-8")
    if not (args.json or args.markdown):
        for name, row in list(merge(usages)["names"].items())[:args.top]:
            print(f"{row['packs']:4d} {row['uses']:6d}  {name}")
    print(f"{len(usages)} packs scanned, {len(failures)} not", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

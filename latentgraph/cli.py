"""``latentgraph``: run, validate, convert workflows and list nodes, from the shell.

Exit codes: 0 success; 1 invalid workflow, unreadable file or failed node; 2 bad command
line; 130 interrupted. Errors print as one readable block; ``--debug`` adds tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path


from .graph import (Environment, Executor, Interrupted, LatentgraphError, NodeExecutionError, Problem,
                    ValidationError, Workflow, WorkflowError)
from .graph import budgets
from .graph.env import read_extra_model_paths
from .graph.loaders import parse_yaml_value
from .graph.types import Combo, String
from .make_files import cmd_make_checkpoint
from .nodes import create_registry, create_services


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                   help="show Python tracebacks on errors")
    return p


def _batch_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ray", default=None, metavar="ADDRESS|local",
                   help="run the jobs on a Ray cluster (pip install 'latentgraph[ray]'); 'local' starts one here")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="Ray workers (default: one per GPU, else one per CPU slot of the cluster)")


def _plugins(p: argparse.ArgumentParser) -> None:
    p.add_argument("--custom-nodes", action="append", default=[], metavar="DIR",
                   help="a folder of custom-node modules or packages (repeatable)")
    p.add_argument("--config", default=None, metavar="YAML",
                   help="config file with custom_nodes: (default: $LATENTGRAPH_CONFIG or "
                        "~/.config/latentgraph/config.yaml if it exists)")
    p.add_argument("--no-plugins", action="store_true",
                   help="load no plugins: neither entry points nor custom-node folders")


def _folders(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="output", help="where output images go (default: output)")
    p.add_argument("--input-dir", default="input", help="where LoadImage looks (default: input)")
    p.add_argument("--temp-dir", default="temp", help="where previews go (default: temp)")
    p.add_argument("--models-dir", default="models", help="model folders root (default: models)")
    p.add_argument("--extra-model-paths", action="append", default=[], metavar="YAML",
                   help="ComfyUI's extra_model_paths.yaml: more model folders (repeatable)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="model dtype (auto: fp16 on CUDA with the VAE in bf16 or fp32; fp32 on the CPU)")
    p.add_argument("--precision", default="exact", choices=("exact", "fast"),
                   help="exact (default): the dtypes of --dtype; fast: bf16 UNet and text encoders on a CPU "
                        "with bf16 instructions (AVX512-BF16/AMX), fp32 without them; as auto on a GPU")
    p.add_argument("--lowvram", action="store_true",
                   help="keep weights on the CPU and move each model to the device only while it runs")
    p.add_argument("--vram-budget", default="auto", metavar="GB",
                   help="GiB of GPU memory models may hold: kept there while they fit, the least recently "
                        "used sent back to RAM, a model too big loaded in part (default: auto, from free "
                        "memory on CUDA); on the CPU a number simulates a GPU of that size")
    p.add_argument("--compile", nargs="?", const="regional", default="off", choices=("off", "regional", "full"),
                   help="torch.compile the UNet on first use, once per image size: regional (the default of a "
                        "bare --compile: each block; quick to compile, keeps patches working) or full (the whole "
                        "UNet, CUDA graphs on a GPU)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of pixels, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="latentgraph", parents=[common],
        description="Node-graph pipelines for Stable Diffusion: run, validate and convert workflow files.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", parents=[common], help="run a workflow file",
                         description="Validate and run a workflow (YAML, API JSON, ComfyUI UI JSON, or a PNG carrying one).")
    run.add_argument("file", help="workflow file")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="override an input before running (repeatable); VALUE is read as YAML")
    _folders(run)
    _plugins(run)
    run.add_argument("--json", action="store_true", help="print one JSON object per run on stdout")
    run.add_argument("--repeat", type=int, default=1, metavar="N", help="run N times in one process")
    run.add_argument("--no-progress", action="store_true", help="no progress bars even on a terminal")
    run.add_argument("--sweep", action="append", default=[], metavar="NODE.INPUT=VALUES",
                     help="run once per value (a..b or a YAML list; several make a grid), as a batch")
    _batch_options(run)

    batch = sub.add_parser("batch", parents=[common], help="run a jobs file: one workflow, many overrides",
                           description="Run every job of a jobs file (workflow: and jobs: and/or grid:), in this "
                                       "process or on a Ray cluster; jobs already done are skipped.")
    batch.add_argument("file", metavar="JOBS.yaml")
    _folders(batch)
    _plugins(batch)
    batch.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")
    _batch_options(batch)

    val = sub.add_parser("validate", parents=[common], help="check a workflow without running it")
    val.add_argument("file")
    val.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.INPUT=VALUE")
    _folders(val)
    _plugins(val)
    val.add_argument("--json", action="store_true", help="print ComfyUI's {error, node_errors} as JSON")

    conv = sub.add_parser("convert", parents=[common], help="convert between YAML and API JSON")
    conv.add_argument("file")
    conv.add_argument("--to", required=True, choices=("api", "yaml"), help="output format")
    conv.add_argument("-o", "--output", help="write here instead of stdout")
    _plugins(conv)

    make = sub.add_parser("make-checkpoint", parents=[common], help="write a random-weight checkpoint",
                          description="Write a random-weight checkpoint in the original single-file layout, "
                                      "with its architecture in the safetensors metadata.")
    make.add_argument("out", metavar="OUT.safetensors")
    make.add_argument("--kind", default="checkpoint",
                      choices=("checkpoint", "controlnet", "t2i_adapter", "control_lora", "gligen", "clip_vision",
                               "style_model", "unet", "clip", "diffusers", "upscale_model", "lora", "hypernetwork"),
                      help="a whole checkpoint, a ControlNet (LDM control_model.* layout), a T2I-Adapter, a "
                           "control-LoRA (Stability's lora_controlnet layout) or a GLIGEN textbox file (sd15 "
                           "only) for the family; a CLIP vision model (--variant, --layout) or a T2I style "
                           "model (sd15 only); split files: a UNet alone (unet, --layout ldm|diffusers), a text "
                           "encoder alone (clip, --layout hf|openclip, --variant clip-l|clip-h|clip-g), a "
                           "diffusers folder (diffusers: OUT is a folder); a tiny spandrel upscale model "
                           "(upscale_model, --variant esrgan|compact|swinir, no --family); a random LoRA of a "
                           "LyCORIS kind (lora, --variant, --rank) or a hypernetwork (.pt, or .safetensors) for the "
                           "family")
    make.add_argument("--family", default=None,
                      choices=("sd15", "sd2", "sdxl", "sdxl_refiner", "sd21_unclip_l", "sd21_unclip_h"),
                      help="sd21_unclip_l/h (--kind checkpoint): SD2.1-unCLIP with its CLIP image encoder")
    make.add_argument("--size", default="tiny", choices=("tiny", "full"))
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--variant", choices=("full", "light", "xl", "vit-l", "vit-h", "vit-bigg", "clip-l", "clip-h",
                                            "clip-g", "ssd1b", "vega", "koala_700m", "koala_1b", "playground_v25",
                                            "cosxl", "ip2p", "esrgan", "compact", "swinir", "lora", "locon", "loha",
                                            "lokr", "dora", "oft", "boft", "glora"),
                      default=None,
                      help="--kind t2i_adapter: full or light (sd15, sd2) or xl (sdxl; the default for sdxl); "
                           "--kind clip_vision: vit-l, vit-h or vit-bigg (default: vit-l for sd15, vit-h for sd2, "
                           "vit-bigg for sdxl); --kind checkpoint: an SDXL derivative (ssd1b, vega, koala_700m, "
                           "koala_1b, playground_v25, cosxl) or InstructPix2Pix (ip2p, sd15 or sdxl); --kind lora: "
                           "lora (the default), locon, loha, lokr, dora, oft, boft or glora")
    make.add_argument("--layout", choices=("hf", "openclip", "ldm", "diffusers"), default=None,
                      help="--kind clip_vision: transformers' vision_model.* (hf, the default) or OpenCLIP's visual.*; "
                           "--kind clip: text_model.* (hf, the default) or OpenCLIP's names; --kind unet: LDM "
                           "(ldm, the default) or diffusers keys")
    make.add_argument("--rank", type=int, default=None, help="--kind control_lora: the rank of its up/down "
                      "pairs (default 4; Stability's files use 128 or 256); --kind lora: its rank (default 4)")
    make.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                      help="tensor dtype in the file (default: fp32 for tiny, fp16 for full)")
    make.add_argument("--prediction", choices=("eps", "v"), default=None,
                      help="mark the model eps- or v-predicting (default: the family's)")
    make.add_argument("--no-metadata", action="store_true",
                      help="leave the architecture out, so the loader must detect it from keys and shapes")

    train = sub.add_parser("train-demo", parents=[common], help="train the shapes demo model",
                           description="Train the small latent diffusion model that draws coloured shapes "
                                       "(about 28 minutes on 2 CPU cores) and write it as an SD1-layout checkpoint.")
    train.add_argument("--out", default="models/checkpoints/latentgraph-shapes.safetensors")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--vae-steps", type=int, default=None)
    train.add_argument("--unet-steps", type=int, default=None)
    train.add_argument("--pool", type=int, default=None, help="pictures encoded for the UNet stage")

    serve = sub.add_parser("serve", parents=[common], help="serve ComfyUI's HTTP and websocket API",
                           description="Run the ComfyUI-compatible server: queue prompts over HTTP, follow them "
                                       "over the websocket, read the history.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8188, help="port (default: 8188)")
    _folders(serve)
    _plugins(serve)
    serve.add_argument("--user-dir", default="user", help="settings and the persisted history (default: user)")
    serve.add_argument("--max-upload-size", type=float, default=100.0, metavar="MB",
                       help="largest request body in MB (default: 100)")
    serve.add_argument("--ray", default=None, metavar="ADDRESS|local",
                       help="run queued prompts on a Ray cluster's workers (pip install 'latentgraph[ray]')")
    serve.add_argument("--workers", type=int, default=None, metavar="N",
                       help="Ray workers (default: one per GPU, else one per CPU slot)")
    serve.add_argument("--frontend", default="auto", metavar="auto|none|PATH",
                       help="ComfyUI's web frontend at /: auto = the installed comfyui-frontend-package "
                            "(pip install 'latentgraph[frontend]'), none, or a folder with index.html")
    serve.add_argument("--preview-method", default="auto", choices=("none", "auto", "latent2rgb", "taesd"),
                       help="step previews of sampler nodes (a prompt's extra_data.preview_method overrides it): "
                            "taesd = a TAESD decoder from models/vae_approx, auto (the default) = taesd when one is "
                            "found for the model, else latent2rgb (a linear projection)")
    serve.add_argument("--preview-size", type=_positive_int, default=512, metavar="N",
                       help="longest side of a preview in pixels; larger ones are shrunk (default: 512)")

    nodes = sub.add_parser("nodes", parents=[common], help="list the node types")
    nodes.add_argument("--json", action="store_true", help="print the /object_info document")
    nodes.add_argument("--models-dir", default="models")
    nodes.add_argument("--input-dir", default="input")
    nodes.add_argument("--extra-model-paths", action="append", default=[], metavar="YAML")
    nodes.add_argument("--plugins", action="store_true",
                       help="list the plugin packs: source, status, nodes, import time")
    nodes.add_argument("--missing", action="store_true",
                       help="ComfyUI 0.3.64's core nodes that are not here, each with the reason")
    _plugins(nodes)

    templates = sub.add_parser("templates", parents=[common], help="list the workflow templates the frontend offers",
                               description="The templates of comfyui-workflow-templates (pip install "
                                           "'latentgraph[frontend]') whose nodes latentgraph has: the ones "
                                           "`latentgraph serve` offers in the frontend's templates dialog.")
    templates.add_argument("--all", action="store_true",
                           help="also list the hidden ones, each with the nodes it lacks, and the node types "
                                "that hide the most")
    templates.add_argument("--json", action="store_true", help="print JSON")
    _plugins(templates)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "precision", "exact") == "fast" and getattr(args, "dtype", "auto") != "auto":
        parser.error(f"--precision fast picks the dtypes itself; drop --dtype {args.dtype} or --precision fast")
    debug = getattr(args, "debug", False)
    try:
        return _COMMANDS[args.command](args)
    except (ValidationError, WorkflowError) as exc:
        _err(exc.format())
        return 1
    except NodeExecutionError as exc:
        _err(exc.format(debug=debug))
        return 1
    except (Interrupted, KeyboardInterrupt) as exc:
        _err(f"latentgraph: {exc}" if isinstance(exc, Interrupted) else "latentgraph: interrupted")
        return 130
    except LatentgraphError as exc:
        _err(str(exc))
        return 1
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug: say so plainly, keep the traceback for --debug
        if debug:
            traceback.print_exc()
        _err(f"latentgraph: internal error: {type(exc).__name__}: {exc}"
             + ("" if debug else " (run with --debug for the traceback)"))
        return 1


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _extra_dirs(args) -> dict[str, list[Path]]:
    dirs: dict[str, list[Path]] = {}
    for path in getattr(args, "extra_model_paths", []) or []:
        for kind, folders in read_extra_model_paths(path).items():
            dirs.setdefault(kind, []).extend(folders)
    return dirs


def _dtype(args) -> str:
    """--dtype, or "fast" for --precision fast (main refuses both together); says so on
    stderr when fast falls back to fp32 on a CPU without bf16 instructions."""
    if getattr(args, "precision", "exact") != "fast":
        return getattr(args, "dtype", "auto")
    if getattr(args, "device", "auto") in ("auto", "cpu"):
        from .models.cpu_kernels import cpu_bf16_native
        from .models.management import resolve_device

        if resolve_device(args.device).type == "cpu" and not cpu_bf16_native():
            _err("latentgraph: --precision fast: this CPU has no bf16 instructions (AVX512-BF16 or AMX); "
                 "running in fp32")
    return "fast"


def _env(args) -> Environment:
    """The command's Environment (made once: plugins loading and the run share it)."""
    made = getattr(args, "_environment", None)
    if made is not None:
        return made
    try:
        args._environment = Environment(
            output_dir=Path(args.output_dir), input_dir=Path(args.input_dir),
            temp_dir=Path(getattr(args, "temp_dir", "temp")), models_dir=Path(args.models_dir),
            device=getattr(args, "device", "auto"), dtype=_dtype(args), lowvram=getattr(args, "lowvram", False),
            model_dirs=_extra_dirs(args), vram_budget=getattr(args, "vram_budget", "auto"),
            compile=getattr(args, "compile", "off"))
    except ValueError as exc:
        raise LatentgraphError(f"latentgraph: {exc}") from None
    return args._environment


def _registry(args):
    """Built-in nodes plus the plugins: entry points, --custom-nodes, the config file's
    custom_nodes and the custom_nodes of --extra-model-paths files."""
    from .plugins import load_plugins

    registry = create_registry()
    if getattr(args, "no_plugins", False):
        return registry
    folders = _plugin_folders(args)
    # ComfyUI packs read the model folders through folder_paths at import: the run's Environment
    load_plugins(registry, folders, env=_env(args) if all(hasattr(args, a) for a in ("models_dir", "output_dir", "input_dir")) else None)
    return registry


def _plugin_folders(args) -> list[Path]:
    """--custom-nodes, the config file's custom_nodes, and those of --extra-model-paths files."""
    from .plugins import default_config_path, read_config

    folders = [Path(f) for f in getattr(args, "custom_nodes", []) or []]
    config = getattr(args, "config", None) or default_config_path()
    if config is not None:
        folders += read_config(config)["custom_nodes"]
    folders += _extra_dirs(args).get("custom_nodes", [])
    return folders


def _load(args, registry) -> Workflow:
    wf = Workflow.load(args.file, registry)
    apply_sets(wf, getattr(args, "sets", []), registry)
    return wf


def apply_sets(wf: Workflow, sets: list[str], registry) -> None:
    """Apply ``--set NODE.INPUT=VALUE`` overrides, reporting every bad one at once."""
    problems: list[Problem] = []
    for item in sets:
        path, eq, raw = item.partition("=")
        node_id, dot, name = path.rpartition(".")
        if not eq or not dot or not node_id or not name:
            problems.append(Problem(f"--set {item!r}: expected NODE.INPUT=VALUE"))
            continue
        if node_id not in wf.nodes:
            problems.append(Problem(f"--set {item!r}: no such node (nodes: {', '.join(list(wf.nodes)[:20])})",
                                    node=node_id))
            continue
        ndef = registry.get(wf.nodes[node_id].class_type)
        if ndef is not None and name not in ndef.inputs:
            hint = ", ".join(ndef.inputs) or "none"
            problems.append(Problem(f"--set {item!r}: {ndef.name} has no input '{name}' (inputs: {hint})",
                                    node=node_id, input=name))
            continue
        if len(raw) > budgets.limit("set_value_chars"):
            problems.append(Problem(budgets.over("set_value_chars", f"--set {path}=...: the value"),
                                    node=node_id, input=name))
            continue
        spec = ndef.inputs[name] if ndef is not None else None
        try:
            wf.set(path, raw if isinstance(spec, (String, Combo)) or not raw.strip()
                   else parse_yaml_value(raw, f"--set {path}"))
        except ValueError as exc:  # an anchor, an alias or nesting past the budget
            problems.append(Problem(str(exc), node=node_id, input=name))
    if problems:
        raise WorkflowError(wf.source, problems)


def cmd_run(args) -> int:
    if args.sweep or args.ray:
        from .batch import sweep_overrides

        if args.repeat != 1 or args.json:
            raise LatentgraphError("latentgraph run: --sweep and --ray do not combine with --repeat or --json")
        return _run_batch(args, Path(args.file), sweep_overrides(args.sweep))
    if args.repeat < 1:
        raise LatentgraphError("latentgraph run: --repeat must be at least 1")
    registry = _registry(args)
    env = _env(args)
    wf = _load(args, registry)
    try:
        services = create_services(env)
    except ValueError as exc:
        raise LatentgraphError(f"latentgraph: {exc}") from None
    executor = Executor(registry, env, services=services)
    plan = executor.validate(wf)
    for w in plan.warnings:
        _err(f"warning: {wf.source}: {w.where()}: {w.message}")
    show_bars = not args.no_progress and not args.json and sys.stderr.isatty()
    for i in range(args.repeat):
        bars = _ProgressBars(wf) if show_bars else None
        start = time.perf_counter()
        try:
            result = executor.run_plan(plan, listener=bars)
        finally:
            if bars:
                bars.close()
        elapsed = time.perf_counter() - start
        _node_warnings(result, plan)
        if args.json:
            print(json.dumps(result.as_json()), flush=True)
            continue
        for path in _written_files(result.outputs, env):
            print(f"wrote {path}")
        label = f"run {i + 1}/{args.repeat}: " if args.repeat > 1 else ""
        print(f"{label}done in {elapsed:.2f} s: {len(result.executed)} nodes executed, "
              f"{len(result.cached)} cached", flush=True)
    return 0


def _node_warnings(result, plan) -> None:
    """Print the warnings nodes returned as UI output ({"warnings": [...]}, e.g. LoraLoader's
    keys that applied nowhere), naming the node, and those of the run itself (an execution
    blocker's message)."""
    for node_id, ui in result.outputs.items():
        pnode = plan.nodes.get(node_id)  # a node an expansion added is not in the plan
        for text in ui.get("warnings", ()) if isinstance(ui, dict) else ():
            _err(f"warning: {pnode.ndef.name if pnode else 'expanded node'} (node {node_id}): {text}")
    for w in result.warnings[len(plan.warnings):]:
        _err(f"warning: {w.where()}: {w.message}")


def cmd_batch(args) -> int:
    from .batch import read_jobs_file

    workflow, overrides = read_jobs_file(args.file)
    return _run_batch(args, workflow, overrides)


def _run_batch(args, workflow: Path, overrides: list[dict]) -> int:
    from .batch import LocalRunner, make_jobs, run_batch

    registry = _registry(args)
    env = _env(args)
    wf = Workflow.load(workflow, registry)
    apply_sets(wf, getattr(args, "sets", []), registry)
    jobs = make_jobs(wf, overrides, registry, env, source=str(args.file))
    if args.ray:
        from .batch.ray_runner import RayRunner

        runner = RayRunner(args.ray, env, workers=args.workers, custom_nodes=_plugin_folders(args),
                           plugins=not getattr(args, "no_plugins", False))
    else:
        if args.workers not in (None, 1):
            raise LatentgraphError("latentgraph: --workers needs --ray (in this process jobs run one at a time)")
        try:
            services = create_services(env)
        except ValueError as exc:
            raise LatentgraphError(f"latentgraph: {exc}") from None
        runner = LocalRunner(Executor(registry, env, services=services))
    try:
        result = run_batch(jobs, runner, env.output_dir, progress=False if args.no_progress else None)
    finally:
        runner.close()
    for record in result.failed:
        _err(f"job {record['index']} ({record['job_id']}) failed:\n  " + record["error"].replace("\n", "\n  "))
    print(f"batch: {len(jobs)} jobs on {runner.name}: {len(result.done)} done, {len(result.skipped)} already done, "
          f"{len(result.failed)} failed{', interrupted' if result.interrupted else ''} in {result.seconds:.2f} s; "
          f"outputs and records (job.json) in {env.output_dir}/<job id>/", flush=True)
    if result.interrupted:
        return 130
    return 1 if result.failed else 0


def _written_files(outputs: dict, env: Environment) -> list[Path]:
    from .graph.env import FOLDER_TYPES
    from .graph.executor import ui_files

    paths = []
    for ui in outputs.values():
        for item in ui_files(ui):
            kind = item.get("type", "output")
            root = env.folder_of(kind) if kind in FOLDER_TYPES else env.output_dir
            paths.append(root / item.get("subfolder", "") / item["filename"])
    return paths


class _ProgressBars:
    """Turns progress events into one tqdm bar per node, on a terminal."""

    def __init__(self, wf: Workflow):
        self.wf = wf
        self.bar = None
        self.node = None

    def __call__(self, kind: str, data: dict) -> None:
        if kind == "progress":
            from tqdm import tqdm

            if self.bar is None or self.node != data["node"]:
                self.close()
                node = data["node"]
                self.node = node
                label = f"{node} ({self.wf.nodes[node].class_type})" if node in self.wf.nodes else str(node)
                self.bar = tqdm(total=data["max"], desc=label, file=sys.stderr, leave=False)
            self.bar.n = data["value"]
            self.bar.refresh()
        elif kind in ("executing", "execution_success", "execution_error", "execution_interrupted"):
            if kind != "executing" or data.get("node") != self.node:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            self.node = None


def cmd_validate(args) -> int:
    registry = _registry(args)
    env = _env(args)
    wf = _load(args, registry)
    executor = Executor(registry, env)
    try:
        plan = executor.validate(wf)
    except ValidationError as exc:
        if args.json:
            print(json.dumps(exc.report.as_comfy(), indent=2, default=str))
            return 1
        raise
    if args.json:
        print(json.dumps({"error": None, "node_errors": {}, "outputs": plan.targets,
                          "nodes": list(plan.nodes)}, indent=2))
        return 0
    for w in plan.warnings:
        _err(f"warning: {wf.source}: {w.where()}: {w.message}")
    print(f"{wf.source}: ok: {len(plan.nodes)} nodes to run for {len(plan.targets)} output"
          f"{'s' if len(plan.targets) != 1 else ''} ({', '.join(plan.targets)})")
    return 0


def cmd_convert(args) -> int:
    registry = _registry(args)
    wf = Workflow.load(args.file, registry)
    unknown = sorted({s.class_type for s in wf.nodes.values() if s.class_type not in registry})
    if unknown and wf.origin == "yaml" and args.to == "api":
        raise WorkflowError(wf.source, f"unknown node types {unknown}: their links cannot be resolved")
    if args.to == "api":
        text = json.dumps(wf.to_api(registry), indent=2) + "\n"
    else:
        text = wf.to_yaml(registry)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise LatentgraphError(f"{args.output}: cannot write: {exc.strerror or exc}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_nodes(args) -> int:
    registry = _registry(args)
    env = Environment(models_dir=Path(args.models_dir), input_dir=Path(args.input_dir), model_dirs=_extra_dirs(args))
    if args.plugins:
        return _print_plugins(registry, args.json)
    if args.missing:
        from .missing_nodes import format_report, report

        doc = report(registry.names())
        sys.stdout.write(json.dumps(doc, indent=1) + "\n" if args.json else format_report(doc))
        return 0
    info = registry.object_info(env)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    by_category: dict[str, list] = {}
    for name, entry in info.items():
        by_category.setdefault(entry["category"] or "(none)", []).append(entry)
    for category in sorted(by_category):
        print(category)
        for entry in by_category[category]:
            ins = []
            for section in ("required", "optional"):
                for iname, spec in entry["input"].get(section, {}).items():
                    kind = "COMBO" if isinstance(spec[0], list) else spec[0]
                    ins.append(f"{iname}{'?' if section == 'optional' else ''}: {kind}")
            outs = ", ".join(entry["output_name"]) or ("(output node)" if entry["output_node"] else "-")
            print(f"  {entry['name']}({', '.join(ins)}) -> {outs}")
    print(f"{len(info)} node types")
    return 0


def _print_plugins(registry, as_json: bool) -> int:
    from urllib.parse import quote

    packs = registry.plugins
    names = {p.name: _comfy_names(p) for p in packs}
    if as_json:
        print(json.dumps([dict(p.to_json(), comfyui_names=names[p.name]) for p in packs], indent=2))
        return 0
    if not packs:
        print("no plugins (install a package with a 'latentgraph.nodes' entry point, or use --custom-nodes DIR)")
        return 0
    for p in packs:
        status = p.status if p.status == "loaded" else f"{p.status}: {p.error}"
        print(f"{p.name}  [{p.kind or '?'}]  {status}  ({p.import_seconds * 1000:.1f} ms)")
        print(f"  source: {p.source}")
        if p.web_dir and p.status == "loaded":
            print(f"  web: /extensions/{quote(p.name)}/ serves {p.web_dir}")
        if p.nodes:
            print(f"  nodes: {', '.join(p.nodes)}")
        if names[p.name] is not None:
            found = names[p.name]
            print(f"  ComfyUI names: {len(found['provided'])} provided by latentgraph's compatibility layer"
                  + (f"; missing: {', '.join(found['missing'])}" if found["missing"] else "; none missing"))
        for note in p.notes:
            print(f"  note: {note}")
    loaded = sum(p.status == "loaded" for p in packs)
    print(f"{len(packs)} plugin pack{'s' if len(packs) != 1 else ''}: {loaded} loaded, "
          f"{len(packs) - loaded} not; {sum(len(p.nodes) for p in packs)} plugin nodes")
    return 0


def _comfy_names(pack) -> dict | None:
    """For a ComfyUI pack from a folder: the ComfyUI names its source uses, those the
    compatibility layer provides and those it lacks (with the ones it asked for at run time)."""
    from .plugins.api_usage import ScanError, layer_report

    path = Path(pack.source)
    if pack.kind == "latentgraph" or pack.source.startswith("entry point") or not path.exists():
        return None
    try:
        found = layer_report(path)
    except (ScanError, OSError) as exc:
        return {"provided": [], "missing": [], "error": str(exc)}
    found["missing"] = sorted(set(found["missing"]) | set(pack.missing) | ({pack.needs} if pack.needs else set()))
    if not found["provided"] and not found["missing"]:
        return None
    return found


def cmd_templates(args) -> int:
    """The offered templates (and with --all the hidden ones); 2 when the package is missing."""
    from .server.templates import NOT_INSTALLED, format_survey, package_files, survey

    files = package_files()
    if files is None:
        _err(f"latentgraph templates: {NOT_INSTALLED}")
        return 2
    verdicts = survey(files, _registry(args).__contains__)
    sys.stdout.write(format_survey(verdicts, args.all, args.json))
    return 0


def cmd_train_demo(args) -> int:
    from dataclasses import replace

    from tqdm import tqdm

    from .training.train import TrainConfig, train_demo

    cfg = TrainConfig(seed=args.seed)
    for field in ("vae_steps", "unet_steps", "pool"):
        if getattr(args, field) is not None:
            cfg = replace(cfg, **{field: getattr(args, field)})
    bars: dict = {}

    def progress(stage: str, step: int, total: int, loss: float) -> None:
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"train {stage}", file=sys.stderr)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        if step == total:
            bar.close()

    report = train_demo(args.out, cfg, progress, log=lambda text: print(text, flush=True))
    print(f"stages: autoencoder {report['vae_seconds']:.0f} s, data {report['prepare_seconds']:.0f} s, "
          f"UNet {report['unet_seconds']:.0f} s")
    return 0


def _serve_logging() -> None:
    """INFO log lines (the server's, the packs') to stderr as plain text, as ComfyUI, unless
    something configured logging already."""
    import logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)


def cmd_serve(args) -> int:
    from aiohttp import web

    from .server import create_app

    if not 0 < args.port < 65536:
        raise LatentgraphError(f"latentgraph: --port {args.port} is not a TCP port")
    _serve_logging()
    env = _env(args)
    executor = None
    if args.ray:
        from .batch.ray_runner import RayExecutor

        executor = RayExecutor(args.ray, env, workers=args.workers, custom_nodes=_plugin_folders(args),
                               plugins=not args.no_plugins)
        print(f"running prompts on {executor.pool.name}", flush=True)
    elif args.workers is not None:
        raise LatentgraphError("latentgraph: --workers needs --ray")
    try:
        app = create_app(_registry(args), env, user_dir=Path(args.user_dir), max_upload_mb=args.max_upload_size,
                         frontend=args.frontend, executor=executor, preview_method=args.preview_method,
                         preview_size=args.preview_size)
    except ValueError as exc:
        raise LatentgraphError(f"latentgraph: {exc}") from None
    try:
        web.run_app(app, host=args.host, port=args.port, print=lambda text: print(text, flush=True),
                    access_log=None)  # no line per request (ComfyUI's choice): the log terminal stays readable
    except OSError as exc:
        raise LatentgraphError(f"latentgraph: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    return 0


_COMMANDS = {"run": cmd_run, "validate": cmd_validate, "convert": cmd_convert, "nodes": cmd_nodes,
             "make-checkpoint": cmd_make_checkpoint, "train-demo": cmd_train_demo, "serve": cmd_serve,
             "batch": cmd_batch, "templates": cmd_templates}

if __name__ == "__main__":
    sys.exit(main())

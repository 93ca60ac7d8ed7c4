"""Which of ComfyUI's names a custom-node pack uses, read from its source with :mod:`ast`.

This is the measurement the ComfyUI compatibility layer is built from: :func:`scan` reads every
``.py`` file of a pack (nothing is imported or executed) and records

- every use of ComfyUI's modules (:data:`latentgraph.plugins.COMFY_MODULES`), with aliases
  resolved: ``import comfy.model_management as mm; mm.get_torch_device()`` is
  ``comfy.model_management.get_torch_device``; ``from server import PromptServer`` then
  ``PromptServer.instance.send_sync(...)`` is ``server.PromptServer.instance.send_sync``.
  An import is itself a use (a missing name fails the import). Names imported inside
  ``try: ... except ImportError`` are marked optional. ``from .config import *`` and
  ``from .utils import comfy_paths`` bring the aliases the pack's own file bound; a value stored
  in an object (``self.mm = mm``) or passed around is not followed;
- uses of ModelPatcher / CLIP / VAE methods and attributes on values whose type cannot be known
  statically (``MODEL.clone``, ``CLIP.encode_from_tokens``, ``VAE.decode``). These are by-name
  heuristics: a distinctive name counts on any expression, a generic one (``clone``, ``encode``)
  only when the receiver's name says what it is (``model``, ``clip``, ``vae``);
- features: V3 API, ``WEB_DIRECTORY``, ``NODE_CLASS_MAPPINGS`` entries when literal, lazy
  inputs, ``check_lazy_status``, node expansion, ``ExecutionBlocker``, ``VALIDATE_INPUTS``,
  ``IS_CHANGED``, and the V1 class attributes and hidden inputs the node adapter must honour;
- third-party imports: top-level modules that are not stdlib, not ComfyUI and not the pack's own.

Folders named ``tests``/``test``, hidden ones and symbolic links are skipped.

:func:`merge` counts over packs: for each name, the packs using it and the total uses.
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..graph.errors import LatentgraphError
from . import COMFY_MODULES

MAX_FILE_BYTES = 4 * 1024 * 1024  # one .py file; generated tables above this are not node code
MAX_PACK_BYTES = 64 * 1024 * 1024  # all .py files of one pack together
MAX_PACK_FILES = 5000  # .py files in one pack
MAX_CLASS_ATTRS = 2  # attributes kept past a class name: PromptServer.instance.send_sync
MAX_CHAIN = 6  # segments kept in any resolved name
# A pack's own tests are never imported by ComfyUI: what only they use is not needed to load it.
SKIP_DIRS = frozenset({"node_modules", "__pycache__", "site-packages", "tests", "test"})
_IMPORT_ERRORS = frozenset({"ImportError", "ModuleNotFoundError", "Exception", "BaseException"})

# ModelPatcher (comfy/model_patcher.py), its BaseModel and ModelSampling, CLIP and VAE (comfy/sd.py).
# DISTINCT names are counted on any expression: nothing else in a pack is likely to use them.
# HINTED names are generic words, counted only on a receiver named after the type.
DISTINCT = {
    "MODEL": (
        "set_model_sampler_cfg_function set_model_sampler_post_cfg_function set_model_sampler_pre_cfg_function "
        "set_model_sampler_calc_cond_batch_function set_model_unet_function_wrapper set_model_denoise_mask_function "
        "set_model_patch set_model_patch_replace set_model_attn1_patch set_model_attn2_patch set_model_attn1_replace "
        "set_model_attn2_replace set_model_attn1_output_patch set_model_attn2_output_patch set_model_input_block_patch "
        "set_model_input_block_patch_after_skip set_model_output_block_patch set_model_emb_patch "
        "set_model_forward_timestep_embed_patch set_model_double_block_patch set_model_post_input_patch "
        "add_object_patch set_model_compute_dtype add_weight_wrapper get_model_object model_patches_to "
        "model_patches_models get_key_patches model_state_dict patch_weight_to_device patch_model unpatch_model "
        "partially_unload partially_load current_loaded_device calculate_weight add_callback add_callback_with_key "
        "remove_callbacks_with_key get_callbacks get_all_callbacks add_wrapper add_wrapper_with_key "
        "remove_wrappers_with_key get_wrappers get_all_wrappers set_attachments remove_attachments get_attachment "
        "set_injections remove_injections get_injections set_additional_models remove_additional_models "
        "get_additional_models_with_key get_additional_models get_nested_additional_models inject_model eject_model "
        "pre_run prepare_state add_hook_patches register_all_hook_patches get_combined_hook_patches patch_hooks "
        "unpatch_hooks clean_hooks clone_has_same_weights lowvram_patch_counter loaded_size model_size "
        "model_options model_sampling diffusion_model load_device offload_device object_patches "
        "weight_inplace_update model_patches patches_uuid latent_format model_config model_type manual_cast_dtype "
        "apply_model process_latent_in process_latent_out extra_conds percent_to_sigma calculate_denoised "
        "calculate_input noise_scaling inverse_noise_scaling"),
    "CLIP": (
        "encode_from_tokens encode_from_tokens_scheduled set_tokenizer_option clip_layer add_hooks_to_dict "
        "cond_stage_model tokenizer_options use_clip_schedule apply_hooks_to_conds"),
    "VAE": (
        "vae_encode_crop_pixels decode_tiled encode_tiled decode_tiled_ encode_tiled_ decode_tiled_1d "
        "decode_tiled_3d encode_tiled_1d encode_tiled_3d spacial_compression_decode spacial_compression_encode "
        "temporal_compression_decode first_stage_model vae_dtype memory_used_decode memory_used_encode "
        "throw_exception_if_invalid downscale_index_formula upscale_index_formula"),
}
HINTED = {
    "MODEL": "clone is_clone add_patches model patches get_dtype model_dtype memory_required attachments "
             "wrappers callbacks is_clip parent",
    "CLIP": "clone add_patches tokenize encode tokenizer patcher load_sd get_sd layer_idx get_key_patches load_model",
    "VAE": "decode encode patcher get_sd downscale_ratio upscale_ratio latent_channels latent_dim device "
           "output_device working_dtypes process_input process_output",
}
_DISTINCT = {name: kind for kind, names in DISTINCT.items() for name in names.split()}
_HINTED = {kind: frozenset(names.split()) for kind, names in HINTED.items()}

# Class attributes of a V1 node class and hidden inputs that change how the adapter must call it.
NODE_ATTRS = frozenset({"INPUT_IS_LIST", "OUTPUT_IS_LIST", "OUTPUT_NODE", "RETURN_NAMES", "OUTPUT_TOOLTIPS",
                        "DEPRECATED", "EXPERIMENTAL", "NOT_IDEMPOTENT", "SEARCH_ALIASES", "DESCRIPTION"})
HIDDEN_INPUTS = frozenset({"PROMPT", "EXTRA_PNGINFO", "UNIQUE_ID", "DYNPROMPT", "AUTH_TOKEN_COMFY_ORG",
                           "API_KEY_COMFY_ORG"})
FEATURES = ("v3_api", "v3_nodes", "comfy_entrypoint", "web_directory", "lazy_inputs", "check_lazy_status",
            "expand_returns", "graph_builder", "execution_blocker", "validate_inputs", "is_changed")


class ScanError(LatentgraphError, ValueError):
    """A pack cannot be scanned (over a size budget, not a folder)."""


@dataclass
class Usage:
    """What one pack uses. Counters map a name to its number of uses."""

    pack: str
    files: int = 0
    bytes: int = 0
    unparsed: list[str] = field(default_factory=list)  # files (relative) that did not parse, with the reason
    names: Counter = field(default_factory=Counter)  # "comfy.utils.ProgressBar": 3
    optional: set = field(default_factory=set)  # names only ever imported under try/except ImportError
    methods: Counter = field(default_factory=Counter)  # "MODEL.clone": 4
    features: Counter = field(default_factory=Counter)  # one of FEATURES: count
    node_api: Counter = field(default_factory=Counter)  # NODE_ATTRS and HIDDEN_INPUTS: count
    third_party: Counter = field(default_factory=Counter)  # "cv2": 5
    mapping_keys: set = field(default_factory=set)  # literal keys of NODE_CLASS_MAPPINGS (and *_CLASS_MAPPINGS)
    mappings_partial: bool = False  # some entries were added from expressions we cannot read

    @property
    def node_mappings(self) -> int:
        return len(self.mapping_keys)

    def to_json(self) -> dict:
        return {"pack": self.pack, "files": self.files, "bytes": self.bytes, "unparsed": list(self.unparsed),
                "names": dict(sorted(self.names.items())), "optional": sorted(self.optional),
                "methods": dict(sorted(self.methods.items())), "features": {k: self.features[k] for k in FEATURES},
                "node_api": dict(sorted(self.node_api.items())), "third_party": dict(sorted(self.third_party.items())),
                "node_mappings": self.node_mappings, "node_mappings_partial": self.mappings_partial}


def scan(folder: str | Path, *, max_file_bytes: int = MAX_FILE_BYTES, max_pack_bytes: int = MAX_PACK_BYTES,
         max_files: int = MAX_PACK_FILES) -> Usage:
    """Scan every ``.py`` file under ``folder`` (a pack; or one ``.py`` file, a single-module
    pack) without importing any of it."""
    root = Path(folder)
    name = root.name
    if root.suffix == ".py" and root.is_file() and not root.is_symlink():
        files, root, name = [(root, root.stat().st_size)], root.parent, root.stem
    elif not root.is_dir():
        raise ScanError(f"{root}: not a folder or a .py file")
    else:
        files = _python_files(root, max_files)
    total = 0
    for path, size in files:  # every budget is checked before the first file is read
        if size > max_file_bytes:
            raise ScanError(f"{path}: {size} bytes is over the budget of {max_file_bytes} bytes for one file")
        total += size
    if total > max_pack_bytes:
        raise ScanError(f"{root}: its .py files hold {total} bytes, over the budget of {max_pack_bytes} bytes "
                        "for one pack")
    usage = Usage(pack=name, files=len(files), bytes=total)
    own = _own_modules(root, [p for p, _ in files])
    trees = {path: tree for path, _ in files if (tree := _parse(usage, root, path, max_file_bytes)) is not None}
    stars = _StarExports(root, trees, own)
    required: set[str] = set()  # names imported at least once outside try/except ImportError
    for path, tree in trees.items():
        part = Usage(pack=usage.pack)  # a file counts whole or not at all
        try:
            _FileScan(part, own, required, stars.resolver(path)).run(tree)
        except RecursionError:
            usage.unparsed.append(f"{path.relative_to(root).as_posix()}: RecursionError: nested too deeply to walk")
            continue
        _absorb(usage, part)
    usage.optional -= required
    return usage


def _parse(usage: Usage, root: Path, path: Path, max_file_bytes: int) -> ast.Module | None:
    rel = path.relative_to(root).as_posix()
    try:
        with path.open("rb") as handle:
            source = handle.read(max_file_bytes + 1)  # the file may have grown since it was measured
    except OSError as exc:
        usage.unparsed.append(f"{rel}: {type(exc).__name__}: {exc.strerror}")
        return None
    if len(source) > max_file_bytes:
        raise ScanError(f"{path}: over the budget of {max_file_bytes} bytes for one file")
    try:
        return ast.parse(source, filename=rel)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        # Python 2 files, templates, broken vendored code: counted, never fatal.
        usage.unparsed.append(f"{rel}: {type(exc).__name__}: {exc}".splitlines()[0][:200])
        return None


class _StarExports:
    """The ComfyUI aliases a pack file defines at module level, for ``from .config import *`` (and
    ``from tsc_utils import *`` with the pack's folder on sys.path) in its other files."""

    def __init__(self, root: Path, trees: dict[Path, ast.Module], own: frozenset[str]):
        self.root, self.trees, self.own = root, trees, own
        self.done: dict[Path, dict] = {}
        self.busy: set[Path] = set()

    def resolver(self, path: Path):
        return lambda module, level: self.exports(self._target(path, module, level))

    def _target(self, path: Path, module: str | None, level: int) -> Path | None:
        parts = module.split(".") if module else []
        if level:
            bases = [path.parents[level - 1]] if level <= len(path.relative_to(self.root).parts) else []
        else:  # packs put their folders on sys.path: try each folder from the file's up to the pack's
            bases = list(path.parents)[: len(path.relative_to(self.root).parts)]
        for base in bases:
            for candidate in (base.joinpath(*parts).with_suffix(".py") if parts else None,
                              base.joinpath(*parts, "__init__.py")):
                if candidate in self.trees:
                    return candidate
        return None

    def exports(self, target: Path | None) -> dict:
        if target is None or target in self.busy:
            return {}  # not the pack's file, or an import cycle
        if target not in self.done:
            self.busy.add(target)
            scratch = _FileScan(Usage(pack=""), self.own, set(), self.resolver(target))
            scope = scratch._bindings(self.trees[target].body)
            self.busy.discard(target)
            self.done[target] = {k: v for k, v in scope.items() if not k.startswith("_")}
        return self.done[target]


def _absorb(usage: Usage, part: Usage) -> None:
    for key in ("names", "methods", "features", "node_api", "third_party"):
        getattr(usage, key).update(getattr(part, key))
    usage.optional |= part.optional
    usage.mapping_keys |= part.mapping_keys
    usage.mappings_partial |= part.mappings_partial


def _python_files(root: Path, max_files: int) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            if entry.is_symlink() or entry.name.startswith("."):
                continue  # a link may lead out of the pack; hidden folders are tooling
            if entry.is_dir():
                if entry.name not in SKIP_DIRS:
                    stack.append(entry)
            elif entry.suffix == ".py" and entry.is_file():
                if len(found) >= max_files:
                    raise ScanError(f"{root}: more than the budget of {max_files} .py files for one pack")
                found.append((entry, entry.stat().st_size))
    return sorted(found)


def _own_modules(root: Path, files: list[Path]) -> frozenset[str]:
    """Names the pack could import absolutely from its own tree (packs put subfolders on sys.path)."""
    names = set()
    for path in files:
        rel = path.relative_to(root).parts
        names.add(Path(rel[-1]).stem)
        names.update(rel[:-1])
    names.add(root.name)
    return frozenset(names)


class _FileScan:
    """One file's walk. Aliases live in scopes: the module's, then one per enclosing function."""

    def __init__(self, usage: Usage, own: frozenset[str], required: set[str], star=None):
        self.usage = usage
        self.own = own
        self.star = star or (lambda module, level: {})  # (module, level) -> a pack file's exported aliases
        self.scopes: list[dict[str, tuple[str, bool]]] = []  # local name -> (qualified name, optional)
        self.required = required

    def run(self, tree: ast.Module) -> None:
        self.scopes.append(self._bindings(tree.body))
        for stmt in tree.body:
            self._module_statement(stmt)
        self._visit_all(tree.body)

    # ---- aliases -------------------------------------------------------------------------------

    def _bindings(self, body: list[ast.stmt]) -> dict[str, tuple[str, bool]]:
        """Every import in ``body`` (and its try/if/with/for blocks, not nested defs), recorded as used."""
        scope: dict[str, tuple[str, bool]] = {}
        for stmt, optional in _flat_statements(body, False):
            if isinstance(stmt, ast.Import):
                for alias in stmt.names:
                    self._import(alias.name, optional)
                    if alias.asname:
                        self._bind(scope, alias.asname, alias.name, optional)
                    else:  # `import comfy.sd` binds `comfy`
                        self._bind(scope, alias.name.split(".")[0], alias.name.split(".")[0], optional)
            elif isinstance(stmt, ast.ImportFrom) and (
                    stmt.level or (stmt.module and stmt.module.split(".")[0] in self.own - COMFY_MODULES)):
                exported = self.star(stmt.module, stmt.level)  # the pack's own file: its ComfyUI aliases
                for alias in stmt.names:
                    if alias.name == "*":
                        for local, binding in exported.items():
                            scope.setdefault(local, binding)
                    elif alias.name in exported:  # from .utils import comfy_paths
                        scope.setdefault(alias.asname or alias.name, exported[alias.name])
            elif isinstance(stmt, ast.ImportFrom) and stmt.module and stmt.level == 0:
                for alias in stmt.names:
                    if alias.name == "*":
                        self._import(stmt.module, optional)
                        continue
                    qname = f"{stmt.module}.{alias.name}"
                    self._import(qname, optional)
                    self._bind(scope, alias.asname or alias.name, qname, optional)
        for stmt, optional in _flat_statements(body, False):
            # `mm = comfy.model_management`, `routes = PromptServer.instance.routes`,
            # `pbar = comfy.utils.ProgressBar(n)`: later attribute uses resolve through them.
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                value = stmt.value.func if isinstance(stmt.value, ast.Call) else stmt.value
                chain = self._chain(value, [*self.scopes, scope])
                last = chain.rsplit(".", 1)[-1] if chain else ""
                if last and not _is_constant(last) and (value is stmt.value or last[:1].isupper()):
                    scope.setdefault(stmt.targets[0].id, (chain, optional))
        return scope

    def _bind(self, scope: dict, local: str, qname: str, optional: bool) -> None:
        if qname.split(".")[0] in COMFY_MODULES:
            if local not in scope or scope[local][1]:
                scope[local] = (qname, optional)

    def _import(self, qname: str, optional: bool) -> None:
        top = qname.split(".")[0]
        if top in COMFY_MODULES:
            self.usage.names[qname] += 1
            if optional:
                self.usage.optional.add(qname)
            else:
                self.required.add(qname)
        elif top not in sys.stdlib_module_names and top not in self.own and top != "__main__":
            self.usage.third_party[top] += 1

    def _chain(self, node: ast.AST, scopes: list[dict]) -> str | None:
        """The qualified ComfyUI name of a Name/Attribute chain, or None when it is not ComfyUI's."""
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        for scope in reversed(scopes):
            if node.id in scope:
                parts = scope[node.id][0].split(".") + attrs[::-1]
                return ".".join(_truncate(parts))
        return None

    def _optional(self, node: ast.AST) -> bool:
        while isinstance(node, ast.Attribute):
            node = node.value
        for scope in reversed(self.scopes):
            if isinstance(node, ast.Name) and node.id in scope:
                return scope[node.id][1]
        return False

    # ---- module-level facts --------------------------------------------------------------------

    def _module_statement(self, stmt: ast.stmt) -> None:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "comfy_entrypoint":
            self.usage.features["comfy_entrypoint"] += 1
        targets = stmt.targets if isinstance(stmt, ast.Assign) else (
            [stmt.target] if isinstance(stmt, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            if isinstance(target, ast.Name) and target.id == "WEB_DIRECTORY":
                self.usage.features["web_directory"] += 1
            elif isinstance(target, ast.Name) and _is_mappings(target.id):
                self._mappings(stmt.value)
            elif isinstance(target, ast.Tuple) and any(
                    isinstance(t, ast.Name) and _is_mappings(t.id) for t in target.elts):
                self.usage.mappings_partial = True  # NODE_CLASS_MAPPINGS, NAMES = generate(...)
        if isinstance(stmt, (ast.If, ast.Try)):  # mappings built under a version check or a try
            for inner in [*stmt.body, *getattr(stmt, "orelse", []), *getattr(stmt, "finalbody", [])]:
                self._module_statement(inner)

    def _mappings(self, value: ast.AST | None) -> None:
        """Literal keys of a mappings dict. A part named ``*CLASS_MAPPINGS`` is counted where it is
        defined (packs merge ``IMAGE_CLASS_MAPPINGS`` from their modules); anything else, a loop or
        a call, makes the count partial."""
        if isinstance(value, ast.Dict):
            for key, item in zip(value.keys, value.values):
                if key is None:
                    self._mappings(item)  # {**other.NODE_CLASS_MAPPINGS}
                else:
                    self._mapping_key(key)
        elif isinstance(value, ast.BinOp) and isinstance(value.op, ast.BitOr):
            self._mappings(value.left)
            self._mappings(value.right)
        elif isinstance(value, (ast.Name, ast.Attribute)):
            if not _is_mappings(value.id if isinstance(value, ast.Name) else value.attr):
                self.usage.mappings_partial = True
        elif value is not None:
            self.usage.mappings_partial = True

    def _mapping_key(self, key: ast.AST) -> None:
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            self.usage.mapping_keys.add(key.value)
        else:
            self.usage.mappings_partial = True

    # ---- the walk ------------------------------------------------------------------------------

    def _visit_all(self, nodes: Iterable[ast.AST]) -> None:
        for node in nodes:
            self._visit(node)

    def _visit(self, node: ast.AST) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            self._function(node)
        elif isinstance(node, ast.ClassDef):
            self._class(node)
        elif isinstance(node, (ast.Attribute, ast.Name)):
            self._reference(node)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            pass  # recorded with the scope's bindings
        else:
            if isinstance(node, ast.Dict):
                self._dict(node)
            elif isinstance(node, ast.Return) and isinstance(node.value, ast.Dict):
                if any(_const(k) == "expand" for k in node.value.keys):
                    self.usage.features["expand_returns"] += 1
            elif isinstance(node, ast.Constant) and node.value in HIDDEN_INPUTS:
                self.usage.node_api[node.value] += 1
            elif (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
                  and isinstance(node.value, ast.Name) and _is_mappings(node.value.id)):
                self._mapping_key(node.slice)  # NODE_CLASS_MAPPINGS["Name"] = Class, anywhere
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                  and isinstance(node.func.value, ast.Name) and _is_mappings(node.func.value.id)):
                for arg in node.args:
                    self._mappings(arg)
                if node.keywords:
                    self.usage.mapping_keys.update(k.arg for k in node.keywords if k.arg)
            self._visit_all(ast.iter_child_nodes(node))

    def _function(self, node: ast.AST) -> None:
        if not isinstance(node, ast.Lambda):
            name = node.name
            if name == "check_lazy_status":
                self.usage.features["check_lazy_status"] += 1
            elif name == "VALIDATE_INPUTS":
                self.usage.features["validate_inputs"] += 1
            elif name == "IS_CHANGED":
                self.usage.features["is_changed"] += 1
            self._visit_all(node.decorator_list)
            self._visit_all(ast.iter_child_nodes(node.args))
            if node.returns:
                self._visit(node.returns)
            self.scopes.append(self._bindings(node.body))
            self._visit_all(node.body)
        else:
            self._visit_all(ast.iter_child_nodes(node.args))
            self.scopes.append({})
            self._visit(node.body)
        self.scopes.pop()

    def _class(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            chain = self._chain(base, self.scopes)
            if chain and chain.startswith("comfy_api.") and chain.endswith(".ComfyNode"):
                self.usage.features["v3_nodes"] += 1
        for stmt in node.body:
            if isinstance(stmt, ast.Assign):
                for target in stmt.targets:
                    if isinstance(target, ast.Name) and target.id in NODE_ATTRS:
                        self.usage.node_api[target.id] += 1
        self._visit_all([*node.bases, *node.keywords, *node.decorator_list])
        self.scopes.append(self._bindings(node.body))  # imports in a class body
        self._visit_all(node.body)
        self.scopes.pop()

    def _dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values):
            if _const(key) == "lazy" and isinstance(value, ast.Constant) and value.value is True:
                self.usage.features["lazy_inputs"] += 1

    def _reference(self, node: ast.AST) -> None:
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            return  # `mm = ...` binds a name, it does not use one
        chain = self._chain(node, self.scopes)
        if chain is not None:
            self.usage.names[chain] += 1
            if self._optional(node):
                self.usage.optional.add(chain)
            else:
                self.required.add(chain)
            self._feature_names(chain)
            return  # a resolved chain ends in a Name: nothing inside it to visit
        if isinstance(node, ast.Attribute):
            kind = _method_kind(node)
            if kind:
                self.usage.methods[f"{kind}.{node.attr}"] += 1
            self._visit(node.value)

    def _feature_names(self, chain: str) -> None:
        if chain.startswith(("comfy_api.latest", "comfy_api.v0_0")):
            self.usage.features["v3_api"] += 1
        last = chain.rsplit(".", 1)[-1]
        if last == "GraphBuilder" or ".GraphBuilder." in chain:
            self.usage.features["graph_builder"] += 1
        elif last == "ExecutionBlocker":
            self.usage.features["execution_blocker"] += 1


def _flat_statements(body: list[ast.stmt], optional: bool):
    """Statements of a block and of its nested blocks (not nested defs or classes), with whether
    each is inside ``try`` whose handlers catch ImportError (so a missing module is survivable)."""
    for stmt in body:
        yield stmt, optional
        if isinstance(stmt, (ast.Try, getattr(ast, "TryStar", ast.Try))):
            caught = any(_catches_import_error(h) for h in stmt.handlers)
            yield from _flat_statements(stmt.body, optional or caught)
            for handler in stmt.handlers:
                yield from _flat_statements(handler.body, optional)
            yield from _flat_statements(stmt.orelse, optional)
            yield from _flat_statements(stmt.finalbody, optional)
        elif isinstance(stmt, (ast.If, ast.For, ast.AsyncFor, ast.While, ast.With, ast.AsyncWith)):
            yield from _flat_statements(stmt.body, optional)
            yield from _flat_statements(getattr(stmt, "orelse", []), optional)


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(t, ast.Name) and t.id in _IMPORT_ERRORS for t in types)


def _truncate(parts: list[str]) -> list[str]:
    """Keep a name to MAX_CLASS_ATTRS attributes past its first class-like segment, MAX_CHAIN in all,
    and end it at a constant (``KSampler.SAMPLERS``, not ``KSampler.SAMPLERS.copy``)."""
    end = MAX_CHAIN
    for i, part in enumerate(parts[1:MAX_CHAIN], start=1):
        if i >= end:
            break
        if _is_constant(part):
            return parts[: i + 1]
        if part[:1].isupper() and end == MAX_CHAIN:
            end = min(end, i + 1 + MAX_CLASS_ATTRS)
    return parts[:end]


def _is_constant(part: str) -> bool:
    # MAX_RESOLUTION, SAMPLERS; short capitals (VAE, CLIP) are class names as often as constants
    return part.isupper() and (len(part) > 4 or "_" in part)


def _is_mappings(name: str) -> bool:
    return name.endswith("CLASS_MAPPINGS")


def _const(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else None


def _receiver_kind(node: ast.AST) -> str | None:
    """MODEL / CLIP / VAE when the receiver's own name says so (``model``, ``self.clip``, ``vae``)."""
    if isinstance(node, ast.Attribute):
        name = node.attr
    elif isinstance(node, ast.Name):
        name = node.id
    else:
        return None
    name = name.lower()
    if "clip" in name:
        return "CLIP"
    if "vae" in name:
        return "VAE"
    if "model" in name or "unet" in name or name in ("m", "mp", "patcher"):
        return "MODEL"
    return None


def _method_kind(node: ast.Attribute) -> str | None:
    hint = _receiver_kind(node.value)
    if hint and (node.attr in _HINTED[hint] or _DISTINCT.get(node.attr) == hint):
        return hint
    return _DISTINCT.get(node.attr)


def merge(usages: Iterable[Usage]) -> dict:
    """Counts over packs: ``{"names": {name: {"packs", "uses", "optional_packs"}}, "methods": ...}``."""
    usages = list(usages)
    out: dict[str, dict] = {}
    for key in ("names", "methods", "features", "node_api", "third_party"):
        table: dict[str, dict] = {}
        for usage in usages:
            for name, uses in getattr(usage, key).items():
                if not uses:
                    continue
                row = table.setdefault(name, {"packs": 0, "uses": 0, "optional_packs": 0})
                row["packs"] += 1
                row["uses"] += uses
                if key == "names" and name in usage.optional:
                    row["optional_packs"] += 1
        out[key] = dict(sorted(table.items(), key=lambda kv: (-kv[1]["packs"], -kv[1]["uses"], kv[0])))
    out["packs"] = len(usages)
    return out


def layer_report(folder: str | Path) -> dict[str, list[str]]:
    """For ``latentgraph nodes --plugins``: the ComfyUI names a pack's source uses, split into
    those latentgraph's compatibility layer provides and those it lacks (what would fail when
    the pack imports or runs them). Names only imported under ``try/except ImportError`` count
    as used but never as missing: the pack copes without them."""
    from ..comfy_compat import provides

    usage = scan(folder)
    used, missing = [], []
    for name in sorted(usage.names):
        if provides(name):
            used.append(name)
        elif name not in usage.optional:
            missing.append(name)
    return {"provided": used, "missing": missing}

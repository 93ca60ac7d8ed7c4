"""ComfyUI's ``folder_paths`` over the bound Environment (latentgraph.comfy_compat.runtime).

The folder table (``folder_names_and_paths``: name -> ([folders], extensions)) is built from the
Environment the first time it is asked for, with ComfyUI's folder names and extensions; what a
pack adds or changes in it stays (as in ComfyUI). Built-in latentgraph nodes keep listing their
own folders from the Environment; only packs read this table.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from latentgraph.comfy_compat import runtime
from latentgraph.graph.env import MODEL_EXTENSIONS

supported_pt_extensions = set(MODEL_EXTENSIONS)
# ComfyUI's folder names, their extensions (None: the model extensions), and for those that
# list more than one latentgraph kind, the kinds they cover
_TABLE = {
    "checkpoints": None, "configs": {".yaml"}, "loras": None, "vae": None, "text_encoders": None,
    "diffusion_models": None, "clip_vision": None, "style_models": None, "embeddings": None,
    "diffusers": {"folder"}, "vae_approx": None, "controlnet": None, "gligen": None, "upscale_models": None,
    "custom_nodes": set(), "hypernetworks": None, "photomaker": None, "classifiers": {""},
    "model_patches": None, "audio_encoders": None}
_KINDS = {"controlnet": ("controlnet", "t2i_adapter")}
_LEGACY = {"clip": "text_encoders", "unet": "diffusion_models"}
_tables: dict[int, tuple] = {}  # id(Environment) -> (that Environment, its table)


def map_legacy(folder_name: str) -> str:
    return _LEGACY.get(folder_name, folder_name)


def _env():
    return runtime.current_env()


def _table() -> dict:
    env = _env()
    held = _tables.get(id(env))
    if held is not None and held[0] is env:
        return held[1]
    table = {}
    _tables[id(env)] = (env, table)
    for name, exts in _TABLE.items():
        if name == "custom_nodes":  # not a model folder: ComfyUI's is beside models/
            table[name] = ([str(_base() / "custom_nodes")], set())
            continue
        folders = [str(f) for kind in _KINDS.get(name, (name,)) for f in env.folders(kind)]
        table[name] = (list(dict.fromkeys(folders)), set(supported_pt_extensions) if exts is None else set(exts))
    for kind, extra in env.model_dirs.items():  # extra_model_paths.yaml kinds ComfyUI has no name for
        if kind not in table:
            table[kind] = ([str(f) for f in extra], set(supported_pt_extensions))
    return table


def __getattr__(name: str):
    env = _env()
    dynamic = {"folder_names_and_paths": _table, "models_dir": lambda: str(env.models_dir),
               "output_directory": lambda: _existing(env.output_dir), "input_directory": lambda: _existing(env.input_dir),
               "temp_directory": lambda: str(env.temp_dir), "base_path": lambda: str(_base()),
               "user_directory": get_user_directory, "filename_list_cache": dict}
    if name in dynamic:
        return dynamic[name]()
    raise runtime.missing(__name__, name)


def _existing(folder: Path) -> str:
    """``folder``, made if missing: ComfyUI makes its input folder when folder_paths is
    imported and ships an output folder, and packs list them in INPUT_TYPES."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        logging.getLogger("latentgraph.comfy_compat").error("could not create %s: %s", folder, exc)
    return str(folder)


def get_output_directory() -> str:
    return _existing(_env().output_dir)


def get_temp_directory() -> str:
    return str(_env().temp_dir)


def get_input_directory() -> str:
    return _existing(_env().input_dir)


def _base() -> Path:
    """ComfyUI's base folder (--base-directory): the one holding models/, as the Environment's
    models folder sits in it."""
    return Path(_env().models_dir).absolute().parent


def get_user_directory() -> str:
    """``user/`` beside the output folder: where ``latentgraph serve`` keeps the frontend's
    user data, as ComfyUI keeps it in its base folder."""
    return str(Path(_env().output_dir).absolute().parent / "user")


def get_directory_by_type(type_name: str) -> str | None:
    return {"output": get_output_directory, "temp": get_temp_directory,
            "input": get_input_directory}.get(type_name, lambda: None)()


def annotated_filepath(name: str) -> tuple[str, str | None]:
    for kind in ("output", "input", "temp"):
        if name.endswith(f"[{kind}]"):
            return name[: -len(kind) - 3], get_directory_by_type(kind)
    return name, None


def get_annotated_filepath(name: str, default_dir: str | None = None) -> str:
    name, base = annotated_filepath(name)
    return os.path.join(base or default_dir or get_input_directory(), name)


def exists_annotated_filepath(name: str) -> bool:
    name, base = annotated_filepath(name)
    return os.path.exists(os.path.join(base or get_input_directory(), name))


def add_model_folder_path(folder_name: str, full_folder_path: str, is_default: bool = False) -> None:
    """Add a folder to a folder name (a new name gets no extension filter, as in ComfyUI)."""
    table = _table()
    folder_name = map_legacy(folder_name)
    if folder_name not in table:
        table[folder_name] = ([full_folder_path], set())
        return
    paths = table[folder_name][0]
    if full_folder_path in paths:
        if is_default:
            paths.remove(full_folder_path)
            paths.insert(0, full_folder_path)
    elif is_default:
        paths.insert(0, full_folder_path)
    else:
        paths.append(full_folder_path)


def get_folder_paths(folder_name: str) -> list[str]:
    return list(_table()[map_legacy(folder_name)][0])


def filter_files_extensions(files, extensions) -> list[str]:
    return sorted(f for f in files if not extensions or os.path.splitext(f)[-1].lower() in extensions)


def recursive_search(directory: str, excluded_dir_names: list[str] | None = None) -> tuple[list[str], dict]:
    """Files under ``directory`` as relative paths (links followed), and each folder's mtime."""
    if not os.path.isdir(directory):
        return [], {}
    excluded = set(excluded_dir_names or ())
    files, folders = [], {directory: os.path.getmtime(directory)}
    for root, dirs, names in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if d not in excluded]
        for d in dirs:
            path = os.path.join(root, d)
            folders[path] = os.path.getmtime(path)
        files.extend(os.path.relpath(os.path.join(root, n), directory) for n in names)
    return files, folders


def get_filename_list(folder_name: str) -> list[str]:
    """Every file of the folder name's folders with one of its extensions, sorted, as relative
    POSIX paths. Listed afresh each time (no cache to go stale)."""
    folders, extensions = _table()[map_legacy(folder_name)]
    found: set[str] = set()
    for folder in folders:
        files, _ = recursive_search(folder, excluded_dir_names=[".git"])
        found.update(f.replace(os.sep, "/") for f in filter_files_extensions(files, extensions))
    return sorted(found)


def get_full_path(folder_name: str, filename: str) -> str | None:
    """The file ``filename`` in the first of the folder name's folders that has it; a name that
    climbs out of the folder is read as if from its root (ComfyUI's rule)."""
    table = _table()
    folder_name = map_legacy(folder_name)
    if folder_name not in table:
        return None
    filename = os.path.relpath(os.path.join("/", filename), "/")
    for folder in table[folder_name][0]:
        path = os.path.join(folder, filename)
        if os.path.isfile(path):
            return path
    return None


def get_full_path_or_raise(folder_name: str, filename: str) -> str:
    path = get_full_path(folder_name, filename)
    if path is None:
        raise FileNotFoundError(f"Model in folder '{folder_name}' with filename '{filename}' not found.")
    return path


def get_save_image_path(filename_prefix: str, output_dir: str, image_width=0, image_height=0):
    """(folder, file name, counter, subfolder, prefix) for the next file of ``filename_prefix``,
    with ComfyUI's %width%/%height%/%year%... fields filled in, and its counter: one more than
    the highest number found after ``name_`` up to the next ``_`` in the files already there
    (``name_00020_.png`` counts 20; ``name_00012.png`` counts 0). Outside ``output_dir`` is
    refused with ComfyUI's plain Exception."""
    if "%" in filename_prefix:
        now = time.localtime()
        fields = {"width": image_width, "height": image_height, "year": now.tm_year,
                  "month": f"{now.tm_mon:02d}", "day": f"{now.tm_mday:02d}", "hour": f"{now.tm_hour:02d}",
                  "minute": f"{now.tm_min:02d}", "second": f"{now.tm_sec:02d}"}
        filename_prefix = re.sub(r"%(\w+)%", lambda m: str(fields.get(m.group(1), m.group(0))), filename_prefix)
    filename = os.path.basename(os.path.normpath(filename_prefix))
    subfolder = os.path.dirname(os.path.normpath(filename_prefix))
    folder = os.path.join(output_dir, subfolder)
    if os.path.commonpath((os.path.abspath(output_dir), os.path.abspath(folder))) != os.path.abspath(output_dir):
        raise Exception(f"Saving image outside the output folder is not allowed: {filename_prefix!r} "
                        f"would write in {os.path.abspath(folder)}")
    highest = 0
    try:
        for name in os.listdir(folder):
            if os.path.normcase(name[:len(filename)]) == os.path.normcase(filename) and name[len(filename):][:1] == "_":
                digits = name[len(filename) + 1:].split("_")[0]
                highest = max(highest, int(digits) if digits.isdigit() else 0)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
    return folder, filename, highest + 1, subfolder, filename_prefix


def get_input_subfolders() -> list[str]:
    base = get_input_directory()
    found = []
    for root, dirs, _ in os.walk(base):
        found.extend(os.path.relpath(os.path.join(root, d), base).replace(os.sep, "/") for d in dirs)
    return sorted(found)


def filter_files_content_types(files, content_types) -> list[str]:
    """Files whose MIME type's first part is one of ``content_types`` ("image", "video",
    "audio", "model": as in ComfyUI, "model" means 3D files, MIME model/*, not weights)."""
    import mimetypes

    found = []
    for name in files:
        ext = name.rsplit(".", 1)[-1]
        kind = _CONTENT_TYPES.get(ext)
        if kind is None:
            mime, _ = mimetypes.guess_type(name, strict=False)
            if not mime:
                continue
            kind = mime.split("/")[0]
        if kind in content_types:
            found.append(name)
    return found


_CONTENT_TYPES = {"webp": "image", "fbx": "model"}  # ComfyUI's additions to mimetypes

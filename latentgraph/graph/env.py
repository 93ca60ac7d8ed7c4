"""Where a run reads and writes: folders, device. One object, passed in; no globals."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# File endings listed in model folders (as ComfyUI's supported_pt_extensions).
MODEL_EXTENSIONS = (".safetensors", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".sft")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEVICES = ("auto", "cpu", "cuda", "mps")
FOLDER_TYPES = ("input", "output", "temp")  # ComfyUI's file "type"s
# Model files that ship inside the package (the demo model), searched after the user's folders.
SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "data" / "models"
DTYPES = ("auto", "fast", "fp32", "fp16", "bf16")  # fast: --precision fast (bf16 where the CPU has it)
COMPILE_MODES = ("off", "regional", "full")  # --compile (models/compile.py)
# ComfyUI's legacy folder names and the kinds they now mean
FOLDER_ALIASES = {"clip": "text_encoders", "unet": "diffusion_models"}


@dataclass
class Environment:
    """Folders and device of a run. ``model_dirs`` maps a folder kind ("checkpoints",
    "loras", ...) to extra directories searched besides ``models_dir/<kind>``."""

    output_dir: Path = Path("output")
    input_dir: Path = Path("input")
    temp_dir: Path = Path("temp")
    models_dir: Path = Path("models")
    device: str = "auto"
    dtype: str = "auto"  # auto, fast, fp32, fp16 or bf16: how nodes that load models place them
    lowvram: bool = False  # keep weights on the CPU, move a model to the device only while it runs
    # GiB of device memory models may hold (a float); "auto": from free memory on CUDA, no budget
    # elsewhere; None: no manager (models stay on the device they were loaded to)
    vram_budget: float | str | None = "auto"
    compile: str = "off"  # torch.compile of the UNet: off, regional or full (models/compile.py)
    model_dirs: dict[str, list[Path]] = field(default_factory=dict)

    def __post_init__(self):
        for name in ("output_dir", "input_dir", "temp_dir", "models_dir"):
            setattr(self, name, Path(getattr(self, name)))
        if self.device not in DEVICES and not self.device.startswith(("cuda:", "mps:")):
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)} or cuda:N")
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.compile not in COMPILE_MODES:
            raise ValueError(f"unknown compile mode {self.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        if self.vram_budget is not None and self.vram_budget != "auto":
            self.vram_budget = _budget_gib(self.vram_budget)

    def folders(self, kind: str) -> list[Path]:
        """Where files of ``kind`` are looked for: models_dir/kind (and its legacy name, as
        ComfyUI: ``clip`` for text_encoders, ``unet`` for diffusion_models), the extra folders
        (``extra_model_paths.yaml``), then the package's own (which holds the demo checkpoint)."""
        kind = FOLDER_ALIASES.get(kind, kind)
        legacy = [self.models_dir / old for old, new in FOLDER_ALIASES.items() if new == kind]
        return [self.models_dir / kind, *legacy, *self.model_dirs.get(kind, []), SHIPPED_MODELS / kind]

    def list_models(self, kind: str, extensions=MODEL_EXTENSIONS) -> list[str]:
        """Files under every folder of ``kind``, as sorted relative POSIX paths."""
        found: set[str] = set()
        for folder in self.folders(kind):
            found.update(_list_files(folder, extensions))
        return sorted(found)

    def find_model(self, kind: str, name: str) -> Path | None:
        for folder in self.folders(kind):
            path = _safe_join(folder, name)
            if path is not None and path.is_file():
                return path
        return None

    def list_inputs(self) -> list[str]:
        return sorted(_list_files(self.input_dir, IMAGE_EXTENSIONS))

    def folder_of(self, kind: str) -> Path:
        """The folder of ComfyUI's file type ``kind``: input, output or temp."""
        return {"input": self.input_dir, "output": self.output_dir, "temp": self.temp_dir}[kind]

    def annotated_path(self, name: str, default: str = "input") -> Path | None:
        """Resolve ComfyUI's annotated file names: "a.png", "a.png [output]", "sub/a.png [temp]".
        None when the name leaves its folder."""
        kind = default
        for k in FOLDER_TYPES:
            if name.endswith(f" [{k}]"):
                name, kind = name[: -len(k) - 3], k
                break
        return _safe_join(self.folder_of(kind), name)


def _budget_gib(value: Any) -> float:
    """A --vram-budget in GiB: a number above 0 (the same check as models/vram.parse_budget,
    here without importing torch)."""
    try:
        gib = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"--vram-budget: expected a number of GB (GiB, e.g. 12 or 7.5) or auto, "
                         f"got {value!r}") from None
    if not 0 < gib < float("inf"):
        raise ValueError(f"--vram-budget: the budget must be a number of GB above 0, got {value!r}")
    return gib


def _list_files(folder: Path, extensions) -> list[str]:
    if not folder.is_dir():
        return []
    out = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel = Path(root).relative_to(folder)
        for f in files:
            if f.lower().endswith(extensions) and not f.startswith("."):
                out.append((rel / f).as_posix())
    return out


def _safe_join(folder: Path, name: str) -> Path | None:
    """``folder/name`` unless ``name`` is absolute or climbs out with '..'."""
    if not name or "\x00" in name:
        return None
    rel = Path(name.replace("\\", "/"))
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return folder / rel


def file_identity(path: Path, content_hash: bool = False) -> tuple:
    """What a node that reads ``path`` folds into its cache key: size and mtime (cheap), or
    a SHA-256 of the bytes. A missing file gives a value no existing file gives."""
    try:
        st = path.stat()
    except OSError:
        return ("missing", str(path))
    if not content_hash:
        return (str(path), st.st_size, st.st_mtime_ns)
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return (str(path), digest.hexdigest())


def read_yaml_file(path: str | Path) -> Any:
    """A small YAML settings file, its problems raised naming the file (size budget, no YAML
    anchors or aliases: the same refusals as workflow files)."""
    from .loaders import read_settings_yaml

    return read_settings_yaml(path)


def read_extra_model_paths(path: str | Path) -> dict[str, list[Path]]:
    """ComfyUI's ``extra_model_paths.yaml``: sections (``comfyui:``, ``a111:``, ...) each with an
    optional ``base_path`` (``~`` and ``$VARS`` expanded; relative to the file's folder) and
    folder kinds mapped to one path or several, one per line. Returns kind -> folders."""
    from .errors import LatentgraphError

    path = Path(path)
    data = read_yaml_file(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LatentgraphError(f"{path}: expected sections of folder paths (a mapping), got {type(data).__name__}")
    out: dict[str, list[Path]] = {}
    for section, entries in data.items():
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise LatentgraphError(f"{path}: section {section!r} must map folder kinds to paths")
        base = entries.get("base_path")
        base_dir = path.parent
        if base is not None:
            base_dir = Path(os.path.expandvars(os.path.expanduser(str(base))))
            if not base_dir.is_absolute():
                base_dir = path.parent / base_dir
        for kind, value in entries.items():
            if kind in ("base_path", "is_default") or value is None:
                continue
            if not isinstance(value, str):
                raise LatentgraphError(f"{path}: {section}.{kind} must be a path or lines of paths")
            kind = FOLDER_ALIASES.get(kind, kind)
            for line in value.splitlines():
                line = line.strip()
                if line:
                    folder = Path(os.path.expandvars(os.path.expanduser(line)))
                    out.setdefault(kind, []).append(folder if folder.is_absolute() else base_dir / folder)
    return out

"""Step previews: the denoised latent as a small PIL image, by one of ComfyUI's methods.

``latent2rgb``: a linear latent-to-RGB projection (per family constants, the same ones ComfyUI
uses). ``taesd``: a TAESD decoder from the ``vae_approx`` model folder (models/taesd.py).
``auto``: TAESD when a decoder for the model is found, else latent2rgb. ``none``: no preview
is made at all. A run's method is its ``extra_data["preview_method"]`` (the server puts its
``--preview-method`` there unless the prompt names one); without one, ``auto``.

Which decoder a model gets (``find_decoder``), first match:

1. a decoder made for that very model: a ``*_taesd_decoder.safetensors`` file whose metadata
   ``latentgraph.architecture_sha256`` is the SHA-256 of the model's architecture JSON. The
   package ships ``latentgraph-shapes_taesd_decoder.safetensors``, trained on the demo
   checkpoint's VAE; no other model's architecture matches, so real SD1 models never get it.
2. the family's published decoder, by ComfyUI's rule: the first file (sorted, the user's
   folders before the package's) whose name starts with ``taesd_decoder`` (SD1, SD2) or
   ``taesdxl_decoder`` (SDXL, its refiner, Playground v2.5), unless its metadata names another
   architecture. Other families have no TAESD previews (latent2rgb is used).

Decoders are loaded on the first preview, once per file and device, and kept in the
executor's services (``PreviewDecoders``).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Any, Callable

from ..graph.lazy import lazy
torch = lazy("torch")
from PIL import Image

log = logging.getLogger("latentgraph.nodes")

METHODS = ("none", "auto", "latent2rgb", "taesd")  # ComfyUI's --preview-method values
DEFAULT_METHOD = "auto"
DEFAULT_SIZE = 512  # ComfyUI's --preview-size: the longest side of a preview sent to clients
ARCH_KEY = "latentgraph.architecture_sha256"  # metadata of a decoder trained for one model
MODEL_DECODER = "_taesd_decoder.safetensors"  # how such a decoder's file name ends
# the file names ComfyUI looks for in vae_approx, by family (their latent scale is the family's)
FAMILY_DECODERS = {"sd15": "taesd_decoder", "sd2": "taesd_decoder", "sd21_unclip_l": "taesd_decoder",
                   "sd21_unclip_h": "taesd_decoder", "sdxl": "taesdxl_decoder", "sdxl_refiner": "taesdxl_decoder"}
SERVICE = "preview_decoders"  # the key of PreviewDecoders in an executor's services

# (4 latent channels -> RGB) weights and bias, for latents in the sampler's (scaled) space
_RGB = {
    "sd": (((0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721),
            (-0.2120, -0.2616, -0.7177)), (0.0, 0.0, 0.0)),
    "sdxl": (((0.3651, 0.4232, 0.4341), (-0.2533, -0.0042, 0.1068), (0.1076, 0.1111, -0.0362),
              (-0.3165, -0.2492, -0.2188)), (0.1084, -0.0175, -0.0011)),
    # Playground v2.5's latent format (its own mean and std: another sampling space)
    "sdxl_playground_2_5": (((0.3920, 0.4054, 0.4549), (-0.2634, -0.0196, 0.0653), (0.0568, 0.1687, -0.0755),
                             (-0.3112, -0.2359, -0.2076)), (0.0, 0.0, 0.0)),
}

Preview = Callable[["torch.Tensor"], Image.Image]


def latent2rgb(family: str) -> Preview:
    """The linear preview of a denoised latent (B, 4, h, w): its first image as RGB;
    ``family``: a family name, or a latent format's name that has its own factors."""
    factors, bias = _RGB[family if family in _RGB else "sdxl" if family.startswith("sdxl") else "sd"]
    weight = torch.tensor(factors).t()  # (3, 4)
    b = torch.tensor(bias)

    def preview(denoised: torch.Tensor) -> Image.Image:
        x = denoised[0].detach().float().cpu().movedim(0, -1)  # (h, w, 4)
        rgb = torch.nn.functional.linear(x, weight, b)
        return _image(((rgb + 1.0) / 2.0))

    return preview


def _image(rgb: torch.Tensor) -> Image.Image:
    """(h, w, 3) in 0..1 as an 8-bit picture (truncated, as ComfyUI's previews)."""
    return Image.fromarray(rgb.clamp(0, 1).mul(255).to(torch.uint8).numpy())


def resolve_method(asked: Any, default: str = DEFAULT_METHOD) -> str:
    """A prompt's ``preview_method`` when it is one of METHODS, else ``default`` (the frontend
    sends none for its "default" setting, which means the server's)."""
    return asked if isinstance(asked, str) and asked in METHODS else default


def run_method(ctx) -> str:
    """The preview method of the run a node is in."""
    return resolve_method((getattr(ctx, "extra_data", None) or {}).get("preview_method"))


def architecture_id(arch) -> str:
    """What a model-specific decoder's ARCH_KEY holds: the SHA-256 of the architecture JSON."""
    return hashlib.sha256(arch.to_json().encode()).hexdigest()


def fit_preview(image: Image.Image, size: int) -> Image.Image:
    """``image`` shrunk (bilinear, aspect kept) so its longest side is at most ``size``."""
    if size <= 0 or max(image.size) <= size:
        return image
    scale = size / max(image.size)
    new = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new, Image.Resampling.BILINEAR)


class PreviewDecoders:
    """TAESD decoders loaded for previews, by file identity and device, and the metadata of
    the vae_approx files looked at, by file identity (a changed file is read again)."""

    def __init__(self, max_decoders: int = 4):
        self.max_decoders = max_decoders
        self._decoders: dict[tuple, Any] = {}
        self._metadata: dict[tuple, dict] = {}
        self._lock = threading.Lock()

    def decoder(self, path: Path, device) -> Any:
        from ..models.checkpoint import file_key
        from ..models.taesd import load_taesd_decoder

        key = (*file_key(path), str(device))
        with self._lock:
            found = self._decoders.get(key)
            if found is None:
                dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
                found = load_taesd_decoder(path).to(device, dtype)
                while len(self._decoders) >= self.max_decoders:
                    self._decoders.pop(next(iter(self._decoders)))
                self._decoders[key] = found
            return found

    def metadata(self, path: Path) -> dict:
        """A safetensors file's metadata ({} for other files and unreadable ones)."""
        from ..models.checkpoint import file_key
        from ..models.safetensors_header import read_metadata

        key = file_key(path)
        with self._lock:
            if key not in self._metadata:
                self._metadata[key] = read_metadata(path) or {}
            return self._metadata[key]


def decoders(services: dict) -> PreviewDecoders:
    """The executor's PreviewDecoders (made on first use)."""
    found = services.get(SERVICE)
    return found if found is not None else services.setdefault(SERVICE, PreviewDecoders())


def find_decoder(env, arch, cache: PreviewDecoders) -> Path | None:
    """The TAESD decoder file for a model of architecture ``arch`` (the rule in the module
    docstring), or None."""
    names = env.list_models("vae_approx")
    ident = architecture_id(arch)
    for name in names:
        if name.endswith(MODEL_DECODER):
            path = env.find_model("vae_approx", name)
            if path is not None and cache.metadata(path).get(ARCH_KEY) == ident:
                return path
    prefix = FAMILY_DECODERS.get(arch.family)
    if prefix is None:
        return None
    for name in names:
        if Path(name).name.startswith(prefix):
            path = env.find_model("vae_approx", name)
            made_for = cache.metadata(path).get(ARCH_KEY) if path is not None else None
            if path is not None and made_for in (None, ident):
                return path
    return None


def taesd_preview(model, path: Path, cache: PreviewDecoders, fallback: Preview) -> Preview:
    """The preview of a denoised latent through the decoder at ``path``, on the model's device.
    The sampler's latent is brought to the space the decoder knows: the VAE latent times the
    family's scale (the same values for SD1/SD2/SDXL; Playground v2.5's are converted). A file
    that does not load is logged once and ``fallback`` used for the rest of the run."""
    from ..models.errors import CheckpointError
    from ..models.families import FAMILIES

    device = getattr(getattr(model, "placement", None), "device", None) or torch.device("cpu")
    fmt = model.latent_format
    scale = FAMILIES[model.arch.family].latent_scale
    same_space = fmt.mean is None and fmt.scale == scale
    broken: list = []

    def preview(denoised: torch.Tensor) -> Image.Image:
        if broken:
            return fallback(denoised)
        try:
            decoder = cache.decoder(path, device)
        except (CheckpointError, OSError) as exc:  # a bad file, or one gone since it was found
            log.warning("TAESD previews: %s; using latent2rgb", exc)
            broken.append(exc)
            return fallback(denoised)
        with torch.inference_mode():
            x = denoised[:1].detach().to(device, torch.float32)
            if not same_space:
                x = fmt.process_out(x) * scale
            rgb = decoder(x.to(next(decoder.parameters()).dtype))[0]
            return _image(rgb.float().movedim(0, -1).cpu())

    return preview


def preview_factory(model, method: str = DEFAULT_METHOD, env=None, cache: PreviewDecoders | None = None
                    ) -> Preview | None:
    """The preview function a sampler calls with its denoised latent, or None for ``none``.
    TAESD needs ``env`` (the vae_approx folders) and ``cache``; a missing decoder under
    ``taesd`` is logged and latent2rgb used, as ComfyUI."""
    if method == "none":
        return None
    linear = latent2rgb(model.latent_format.name or model.arch.family)
    if method == "latent2rgb" or env is None:
        return linear
    cache = cache if cache is not None else PreviewDecoders()
    path = find_decoder(env, model.arch, cache)
    if path is None:
        if method == "taesd":
            wanted = FAMILY_DECODERS.get(model.arch.family)
            where = f"vae_approx/{wanted}.safetensors" if wanted else f"(none exists for the {model.arch.family} family)"
            log.warning("TAESD previews asked for, but no TAESD decoder was found %s; using latent2rgb", where)
        return linear
    return taesd_preview(model, path, cache, linear)


def previewer(ctx, model) -> Preview | None:
    """A sampling node's preview function: the run's method, the Environment's vae_approx
    folders and the executor's decoder cache."""
    return preview_factory(model, run_method(ctx), ctx.env, decoders(ctx.services))

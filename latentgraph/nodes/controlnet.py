"""ControlNet nodes with ComfyUI's names and inputs: the loaders (plain and "diff") and the
apply nodes that put a control into conditioning entries for the sampler.

A CONTROL_NET value is a ``models.controlnet.Control`` without a hint yet; applying it makes
one with the hint, strength and timestep range for each entry, chained after the control the
entry already had (several ControlNets on one conditioning add their residuals).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
Tensor = lazy("torch", "Tensor")

from ..graph import CONDITIONING, IMAGE, MODEL, Combo, Float, NodeContext, Socket, file_identity, node
file_key = lazy("..models.checkpoint", "file_key")
Control = lazy("..models.controlnet", "Control")
load_controlnet_file = lazy("..models.controlnet", "load_controlnet_file")
from .budget import check_tensor
from .loaders import services
from .sd import SDModel

CONTROL_NET = Socket("CONTROL_NET")
KINDS = ("controlnet", "t2i_adapter")  # ComfyUI lists both folders under "controlnet"
Cond = Any


def _names(env) -> list[str]:
    return sorted({n for kind in KINDS for n in env.list_models(kind)}) if env is not None else []


def _find(env, name: str) -> Path | None:
    return next((p for kind in KINDS if (p := env.find_model(kind, name)) is not None), None)


def _check(control_net_name, env):
    if _find(env, control_net_name) is None:
        folders = ", ".join(str(f) for kind in KINDS for f in env.folders(kind))
        return f"ControlNet '{control_net_name}' not found (searched: {folders})"
    return None


def _key(control_net_name, env):
    path = _find(env, control_net_name)
    return file_identity(path) if path is not None else ("missing", control_net_name)


def _pooling(path: Path) -> bool:
    """ComfyUI averages the residuals of "shuffle" ControlNets over the map, told by the name."""
    return path.stem.endswith(("_shuffle", "_shuffle_fp16"))


def _load(ctx: NodeContext, name: str, model: SDModel | None) -> Control:
    placement, cache = services(ctx)
    return load_control(_find(ctx.env, name), placement, cache, model)


def load_control(path: Path, placement, cache, model: SDModel | None = None) -> Control:
    """A CONTROL_NET value (no hint yet) from a ControlNet, control-LoRA or T2I-Adapter file,
    placed by ``placement`` and kept in ``cache`` (a model cache, or None); with ``model``, a
    "diff" ControlNet is added to its UNet."""
    path = Path(path)
    dtype = placement.dtypes["unet"]
    base = model.unet if model is not None else None

    def load():
        return load_controlnet_file(path, dtype, base).to(placement.home)

    # the model cache is keyed by file; a diff ControlNet also depends on the UNet it is added
    # to, which has no stable key (an id can be reused), so it is not cached there (the
    # executor still caches the node's result)
    if base is not None or cache is None:
        net = load()
    else:
        net = cache.get_or_load(("controlnet", *file_key(path), placement.key()), load)
    return Control(net, torch.zeros(1, 3, 8, 8), global_average_pooling=_pooling(path))


@node(category="loaders", display_name="Load ControlNet Model", outputs=[CONTROL_NET],
      fingerprint=_key, validate=_check)
def ControlNetLoader(control_net_name: Annotated[str, Combo(_names)], ctx: NodeContext) -> Control:
    """Loads a ControlNet (SD1.x, SD2.x, SDXL; LDM or diffusers layout, control-LoRA) or a
    T2I-Adapter from models/controlnet (or models/t2i_adapter)."""
    return _load(ctx, control_net_name, None)


@node(category="loaders", display_name="Load ControlNet Model (diff)", outputs=[CONTROL_NET],
      fingerprint=_key, validate=_check)
def DiffControlNetLoader(model: Annotated[SDModel, MODEL], control_net_name: Annotated[str, Combo(_names)],
                         ctx: NodeContext) -> Control:
    """Loads a ControlNet; a "diff" one (weights stored as differences) is added to the model's UNet."""
    return _load(ctx, control_net_name, model)


def _hint(image: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, C) -> the hint (B, C, H, W); the size budget is checked before the copy."""
    if image.ndim != 4:
        raise ValueError(f"image: expected an IMAGE (batch, height, width, channels), got shape {tuple(image.shape)}")
    check_tensor(tuple(image.shape), "the ControlNet hint image", "a hint")
    return image.movedim(-1, 1).contiguous()


_STRENGTH = Float(1.0, min=0.0, max=10.0, step=0.01)


@node(category="conditioning/controlnet", display_name="Apply ControlNet (OLD)", outputs=[CONDITIONING],
      deprecated=True)
def ControlNetApply(
    conditioning: Annotated[Cond, CONDITIONING],
    control_net: Annotated[Control, CONTROL_NET],
    image: Annotated[Tensor, IMAGE],
    strength: Annotated[float, _STRENGTH],
) -> list:
    """Applies a ControlNet to every entry, over the whole run; the negative prompt gets it too
    (at sampling, as ComfyUI does for this node)."""
    if strength == 0:
        return conditioning
    hint = _hint(image)
    out = []
    for tensor, opts in conditioning:
        control = Control(control_net.net, hint, strength, (0.0, 1.0), opts.get("control"),
                          control_net.global_average_pooling)
        out.append([tensor, {**opts, "control": control, "control_apply_to_uncond": True}])
    return out


@node(category="conditioning/controlnet", display_name="Apply ControlNet",
      outputs=[("positive", "CONDITIONING"), ("negative", "CONDITIONING")])
def ControlNetApplyAdvanced(
    positive: Annotated[Cond, CONDITIONING],
    negative: Annotated[Cond, CONDITIONING],
    control_net: Annotated[Control, CONTROL_NET],
    image: Annotated[Tensor, IMAGE],
    strength: Annotated[float, _STRENGTH],
    start_percent: Annotated[float, Float(0.0, min=0.0, max=1.0, step=0.001)],
    end_percent: Annotated[float, Float(1.0, min=0.0, max=1.0, step=0.001)],
    vae: Annotated[Any, Socket("VAE", optional=True)] = None,
) -> tuple:
    """Applies a ControlNet to the positive and negative prompts from start_percent to
    end_percent of the run. ``vae`` is taken for ComfyUI's signature; SD1/SD2/SDXL ControlNets
    read the hint as pixels and do not use it (as in ComfyUI)."""
    if strength == 0:
        return positive, negative
    hint = _hint(image)
    made: dict[int, Control] = {}  # one new control per previous one, shared by both prompts (one batch)
    out = []
    for conditioning in (positive, negative):
        entries = []
        for tensor, opts in conditioning:
            prev = opts.get("control")
            key = id(prev)
            if key not in made:
                made[key] = Control(control_net.net, hint, strength, (start_percent, end_percent), prev,
                                    control_net.global_average_pooling)
            entries.append([tensor, {**opts, "control": made[key], "control_apply_to_uncond": False}])
        out.append(entries)
    return out[0], out[1]

"""ComfyUI's method and attribute names on latentgraph's MODEL, CLIP and VAE values.

Custom-node packs receive our values and call ComfyUI's methods on them (``model.model.
model_sampling.sigma_max``, ``model.add_patches(...)``, ``clip.encode_from_tokens(...)``,
``vae.decode(...)``). These mixins give the values those names, each doing what ComfyUI's does
on latentgraph's own objects: a weight patch changes the weights sampling uses, an object patch
of ``model_sampling`` changes the sigmas, ``model.model`` is a view whose ``diffusion_model`` is
our UNet. Names whose ComfyUI meaning cannot be given here are simply absent.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from .patcher import ModelPatcher, copy_options, new_model_options

# torch and the modules that import it are imported where used: nodes/sd.py imports this
# module, and commands that only list nodes import no torch (tests/test_cli_imports.py)
if TYPE_CHECKING:
    import torch

UNET_KEY = "diffusion_model."  # ComfyUI's prefix of the UNet's weights in model.model's state dict


class ModelType(enum.Enum):
    """ComfyUI's model types (comfy.model_base.ModelType), with its numbers."""

    EPS = 1
    V_PREDICTION = 2
    V_PREDICTION_EDM = 3
    STABLE_CASCADE = 4
    EDM = 5
    FLOW = 6
    V_PREDICTION_CONTINUOUS = 7
    FLUX = 8
    IMG_TO_IMG = 9
    FLOW_COSMOS = 10


# -- model.model: ComfyUI's BaseModel over a MODEL value -----------------------------------------
def _comfy_latent_format(fmt):
    from .comfy_latent import comfy_latent_format

    return comfy_latent_format(fmt)


class ModelConfig:
    """The parts of ComfyUI's model_config that describe our networks: ``unet_config`` (ComfyUI's
    keys), ``sampling_settings`` (the checkpoint's, as loaded), ``latent_format`` and the dtypes."""

    def __init__(self, model):
        arch, u = model.arch, model.arch.unet
        per_block = [d for n, d in zip(u.num_res_blocks, u.transformer_depth) for _ in range(n)]
        self.unet_config = {
            "in_channels": u.in_channels, "out_channels": u.out_channels, "model_channels": u.model_channels,
            "channel_mult": list(u.channel_mult), "num_res_blocks": list(u.num_res_blocks),
            "transformer_depth": per_block, "transformer_depth_middle": u.transformer_depth_middle,
            "transformer_depth_output": list(u.transformer_depth_output), "context_dim": u.context_dim,
            "num_heads": u.num_heads, "num_head_channels": u.num_head_channels,
            "use_linear_in_transformer": u.use_linear_in_transformer, "adm_in_channels": u.adm_in_channels,
            "use_spatial_transformer": True, "legacy": False}
        if arch.sigma_range is not None:  # continuous sigmas (Playground v2.5, CosXL): nodes/sd.py's schedule_for
            self.sampling_settings = {"sigma_min": float(arch.sigma_range[0]), "sigma_max": float(arch.sigma_range[1]),
                                      "sigma_data": 0.5 if arch.prediction == "edm" else 1.0}
        else:
            self.sampling_settings = {"zsnr": True} if arch.zsnr else {}
        self.latent_format = _comfy_latent_format(model.latent_format)
        self.unet_extra_config = {}
        self.manual_cast_dtype = _manual_cast_dtype(model)
        self.family = arch.family  # latentgraph's family name: which of ComfyUI's configs this is


def _manual_cast_dtype(model):
    """The dtype the UNet computes in when its weights are stored in another (an fp8 UNet), else None."""
    compute = getattr(model.unet, "compute_dtype", None)
    return compute if compute is not None and compute != next(model.unet.parameters()).dtype else None


class BaseModel:
    """ComfyUI's ``model.model`` for one MODEL value: ``diffusion_model`` is the value's UNet,
    ``model_sampling`` its noise schedule (both as they are now, patched or not)."""

    def __init__(self, owner):
        self._owner = owner

    diffusion_model = property(lambda self: self._owner.unet)
    model_sampling = property(lambda self: self._owner.schedule)
    latent_format = property(lambda self: _comfy_latent_format(self._owner.latent_format))
    model_config = property(lambda self: ModelConfig(self._owner))
    adm_channels = property(lambda self: self._owner.arch.unet.adm_in_channels or 0)
    manual_cast_dtype = property(lambda self: _manual_cast_dtype(self._owner))
    current_patcher = property(lambda self: self._owner)

    @property
    def model_type(self) -> ModelType:
        """What the checkpoint was trained for (fixed at load, as ComfyUI's)."""
        arch = self._owner.arch
        if arch.prediction == "edm":
            return ModelType.EDM
        if arch.prediction == "v":
            return ModelType.V_PREDICTION_EDM if arch.sigma_range is not None else ModelType.V_PREDICTION
        return ModelType.EPS

    @property
    def device(self) -> torch.device:
        return next(self._owner.unet.parameters()).device

    def get_dtype(self) -> torch.dtype:
        return self._owner.dtype

    def process_latent_in(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_in(latent)

    def process_latent_out(self, latent: torch.Tensor) -> torch.Tensor:
        return self.latent_format.process_out(latent)

    def apply_model(self, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        """The denoised latent at sigma ``t`` (ComfyUI's signature); ``y`` is the one extra
        condition our UNets take."""
        y = kwargs.pop("y", None)
        if kwargs:
            raise TypeError(f"apply_model: latentgraph's UNets take no {', '.join(sorted(kwargs))} condition")
        if c_crossattn is None:
            raise TypeError("apply_model: c_crossattn (the text conditioning) is required")
        return self._owner.apply_model(x, t, c_crossattn, y=y, c_concat=c_concat, control=control,
                                       transformer_options=transformer_options or {})

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The UNet's tensors under ComfyUI's ``diffusion_model.`` prefix."""
        return {UNET_KEY + k: v for k, v in self._owner.unet.state_dict().items()}

    def parameters(self):
        return self._owner.unet.parameters()

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        return self._owner.unet.named_parameters(prefix=prefix + UNET_KEY.rstrip("."), recurse=recurse)


class SDXLRefiner(BaseModel):
    pass


class SDXL(BaseModel):
    pass


class SD21UNCLIP(BaseModel):
    pass


class IP2P:
    pass


class SD15_instructpix2pix(IP2P, BaseModel):
    pass


class SDXL_instructpix2pix(IP2P, SDXL):
    pass


def base_model_class(arch) -> type:
    """ComfyUI's model_base class for an architecture (SD1.x and SD2.x are BaseModel there too)."""
    ip2p = arch.unet.in_channels == 8
    if arch.family == "sdxl":
        return SDXL_instructpix2pix if ip2p else SDXL
    if arch.family == "sdxl_refiner":
        return SDXLRefiner
    if arch.spec.unclip_dim is not None:
        return SD21UNCLIP
    return SD15_instructpix2pix if ip2p else BaseModel


def _same(weight, **_):
    """ComfyUI's convert function in get_key_patches' lists: the weight as it is."""
    return weight


# what latentgraph's sampling calls on a schedule (an object patch of model_sampling must have them)
SCHEDULE_NAMES = ("sigmas", "sigma_min", "sigma_max", "timestep", "sigma", "percent_to_sigma", "calculate_input",
                  "calculate_denoised", "noise_scaling", "inverse_noise_scaling")


class ModelFace:
    """ComfyUI's ModelPatcher names on a MODEL value (nodes/sd.py's SDModel: ``unet``,
    ``schedule``, ``arch``, ``placement``, ``object_patches``), beyond models/patcher.py's
    ``set_model_*``. Like ComfyUI's, ``add_patches`` and ``add_object_patch`` change the value
    they are called on (a node clones first); the tensors and modules they replace are new, so
    the value it was cloned from is never changed."""

    @property
    def model(self) -> BaseModel:
        """ComfyUI's ``model.model`` (one view per value, reading the value's current UNet and schedule)."""
        view = self.__dict__.get("_comfy_base_model")
        if view is None or view._owner is not self:  # (a copy.copy of a value carries the original's)
            view = self.__dict__["_comfy_base_model"] = base_model_class(self.arch)(self)
        return view

    load_device = property(lambda self: self.placement.device)
    offload_device = property(lambda self: self.placement.home)
    weight_inplace_update = False  # patched weights are always new tensors here

    def model_dtype(self) -> torch.dtype:
        return self.dtype

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Patch UNet weights (keys ``diffusion_model.<name>``; see models/weight_patches.py);
        returns the keys applied (others are ignored, as ComfyUI ignores them)."""
        from .weight_patches import apply_patches, group_patches

        names = {UNET_KEY + n: n for n, _ in self.unet.named_parameters()}
        accepted, grouped = group_patches(patches, names, strength_patch, strength_model)
        if grouped:
            self.unet = apply_patches(self.unet, {names[k]: v for k, v in grouped.items()}, UNET_KEY)
        return accepted

    def calculate_weight(self, patches: list, weight: "torch.Tensor", key: str, intermediate_dtype=None):
        """``weight`` after ComfyUI's patch entries, computed in float32, in the weight's dtype."""
        from .weight_patches import patched_weight

        return patched_weight(weight, list(patches), key).to(weight.dtype)

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        """{key: [(weight, convert)]} for each UNet weight as sampling uses it (patches already in)."""
        return {UNET_KEY + n: [(p, _same)] for n, p in self.unet.named_parameters()
                if filter_prefix is None or (UNET_KEY + n).startswith(filter_prefix)}

    def model_state_dict(self, filter_prefix: str | None = None) -> dict:
        return {k: v for k, v in self.model.state_dict().items() if filter_prefix is None or k.startswith(filter_prefix)}

    def get_model_object(self, name: str) -> Any:
        """The object at dotted ``name`` under model.model as sampling will use it (object patches
        included): ``model_sampling``, ``diffusion_model.input_blocks.0``, ``latent_format``."""
        obj = self.model
        for i, part in enumerate(name.split(".")):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AttributeError(f"get_model_object({name!r}): model.model has no "
                                     f"{'.'.join(name.split('.')[:i + 1])!r}") from None
        return obj

    # -- wrappers: ComfyUI's accessors over models/patcher.py's add_wrapper_with_key storage ------
    def _wrappers(self, wrapper_type: str) -> dict:
        return self.model_options.get("transformer_options", {}).get("wrappers", {}).get(wrapper_type, {})

    def add_wrapper(self, wrapper_type: str, wrapper) -> None:
        self.add_wrapper_with_key(wrapper_type, None, wrapper)

    def get_wrappers(self, wrapper_type: str, key: str) -> list:
        return self._wrappers(wrapper_type).get(key, [])

    def get_all_wrappers(self, wrapper_type: str) -> list:
        return [w for group in self._wrappers(wrapper_type).values() for w in group]

    def remove_wrappers_with_key(self, wrapper_type: str, key: str) -> None:
        """Stop calling the wrappers added under ``key`` (this value's options only: a clone's
        are its own copy)."""
        self._wrappers(wrapper_type).pop(key, None)

    def add_object_patch(self, name: str, obj: Any) -> None:
        """Replace ``model_sampling`` (the noise schedule sampling reads), ``diffusion_model`` or
        an attribute/submodule inside it (``diffusion_model.middle_block.1``): the ones sampling
        reads. Other names are refused (latentgraph would never read them)."""
        import torch

        from .weight_patches import PatchError, TreeCopy

        if name == "model_sampling":
            lacking = [n for n in SCHEDULE_NAMES if not hasattr(obj, n)]
            if lacking:
                raise TypeError(f"add_object_patch('model_sampling', {type(obj).__name__}): it has no "
                                f"{', '.join(lacking)}, which sampling calls")
            self.schedule = obj
        elif name == "diffusion_model":
            if not isinstance(obj, torch.nn.Module):
                raise TypeError(f"add_object_patch('diffusion_model', ...): expected a torch.nn.Module, got "
                                f"{type(obj).__name__}")
            self.unet = obj
        elif name.startswith(UNET_KEY):
            tree = TreeCopy(self.unet)
            try:
                tree.set(name[len(UNET_KEY):], obj)
            except PatchError as exc:
                raise AttributeError(f"add_object_patch({name!r}): {exc}") from None
            self.unet = tree.root
        else:
            raise ValueError(f"add_object_patch({name!r}): latentgraph applies object patches to model_sampling, "
                             f"diffusion_model and what is inside diffusion_model only")
        self.object_patches = {**self.object_patches, name: obj}


class VAEFace:
    """ComfyUI's VAE names on a VAE value (nodes/sd.py's VAEModel: ``vae``, ``placement``).
    IMAGE is (B, H, W, C) in 0..1 and latents are unscaled, as in ComfyUI."""

    first_stage_model = property(lambda self: self.vae)
    downscale_ratio = property(lambda self: self.vae.downscale)
    upscale_ratio = property(lambda self: self.vae.downscale)
    latent_channels = property(lambda self: self.vae.config.embed_dim)
    latent_dim = 2
    output_channels = 3
    device = property(lambda self: self.placement.device)
    vae_dtype = property(lambda self: self.vae.dtype)
    output_device = property(lambda self: _cpu())  # decode/encode return CPU tensors

    def spacial_compression_decode(self) -> int:
        return self.vae.downscale

    def spacial_compression_encode(self) -> int:
        return self.vae.downscale

    def process_input(self, image: torch.Tensor) -> torch.Tensor:
        return image * 2.0 - 1.0

    def process_output(self, image: torch.Tensor) -> torch.Tensor:
        return ((image + 1.0) / 2.0).clamp(0.0, 1.0)

    def throw_exception_if_invalid(self) -> None:
        """Nothing to check: a VAE value here always holds a loaded network (ComfyUI's can be empty)."""

    def vae_encode_crop_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        from .latent import crop_to_multiple

        return crop_to_multiple(pixels, self.vae.downscale)

    def _check_latent(self, samples: torch.Tensor) -> None:
        import torch

        if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != self.latent_channels:
            shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
            raise ValueError(f"this VAE decodes latents (B, {self.latent_channels}, h, w), got {shape}")

    def _check_image(self, pixels: torch.Tensor) -> None:
        import torch

        if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[-1] < 3:
            shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
            raise ValueError(f"this VAE encodes IMAGE tensors (B, H, W, 3) in 0..1, got {shape}")

    def decode(self, samples_in: torch.Tensor, vae_options: dict | None = None) -> torch.Tensor:
        """Latent (B, C, h, w) -> IMAGE (B, h*f, w*f, 3) in 0..1."""
        from .latent import decode_latent

        if vae_options:
            raise ValueError(f"vae.decode(vae_options={vae_options!r}): options of ComfyUI's video VAEs; this VAE "
                             f"takes none")
        self._check_latent(samples_in)
        return decode_latent(self.vae, samples_in, self.placement)

    def encode(self, pixel_samples: torch.Tensor) -> torch.Tensor:
        """IMAGE (B, H, W, C) -> latent (B, C, H/f, W/f), centre-cropped to multiples of f first."""
        from .latent import encode_image

        self._check_image(pixel_samples)
        return encode_image(self.vae, pixel_samples, self.placement)

    def decode_tiled(self, samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t=None, overlap_t=None) -> torch.Tensor:
        """decode in square tiles of ``tile_x`` latent pixels (ComfyUI's default 64, overlap 16)."""
        from .latent import decode_latent

        self._check_latent(samples)
        tile = _square_tile(tile_x, tile_y, 64)
        return decode_latent(self.vae, samples, self.placement, tiled=True, tile=tile,
                             overlap=16 if overlap is None else overlap)

    def encode_tiled(self, pixel_samples: torch.Tensor, tile_x: int | None = None, tile_y: int | None = None,
                     overlap: int | None = None, tile_t=None, overlap_t=None) -> torch.Tensor:
        """encode in square tiles of ``tile_x`` pixels (ComfyUI's default 512, overlap 64)."""
        from .latent import encode_image

        self._check_image(pixel_samples)
        tile = _square_tile(tile_x, tile_y, 512)
        return encode_image(self.vae, pixel_samples, self.placement, tiled=True, tile=tile,
                            overlap=64 if overlap is None else overlap)

    def get_sd(self) -> dict:
        return self.vae.state_dict()


def _cpu():
    import torch

    return torch.device("cpu")


def _square_tile(tile_x: int | None, tile_y: int | None, default: int) -> int:
    tile_x = default if tile_x is None else int(tile_x)
    tile_y = tile_x if tile_y is None else int(tile_y)
    if tile_x != tile_y:
        raise ValueError(f"latentgraph's VAE tiles are square: tile_x ({tile_x}) and tile_y ({tile_y}) must match")
    return tile_x


class ClipPatcher(ModelPatcher):
    """ComfyUI's ModelPatcher of a CLIP value (``clip.patcher``)."""

    def __init__(self, clip):
        self._clip = clip
        self.model_options = new_model_options()

    load_device = property(lambda self: self._clip.placement.device)
    offload_device = property(lambda self: self._clip.placement.home)

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        return self._clip.add_patches(patches, strength_patch, strength_model)

    def get_key_patches(self, filter_prefix: str | None = None) -> dict:
        return {k: v for k, v in self._clip.get_key_patches().items() if filter_prefix is None or k.startswith(filter_prefix)}

    def model_state_dict(self, filter_prefix: str | None = None) -> dict:
        """{ComfyUI key: weight} of the text encoders as they are now (packs read the keys to
        choose what to patch: ComfyUI_essentials' attention seekers)."""
        return {key: self._clip.encoders[slot].get_parameter(name)
                for key, (slot, name) in self._clip._comfy_names().items()
                if filter_prefix is None or key.startswith(filter_prefix)}

    def model_dtype(self):
        return next(iter(self._clip.encoders.values())).transformer.embeddings.token_embedding.weight.dtype

    def clone(self):
        raise TypeError("clip.patcher.clone(): clone the CLIP value instead (clip.clone()), whose patcher is a copy")


class ClipFace:
    """ComfyUI's CLIP names on a CLIP value (models/clip.py's TextModel: ``encoders`` by slot
    "l"/"h"/"g", ``tokenize``, ``encode_tokens``, ``layer_idx``). Weight keys are ComfyUI's:
    ``clip_l.transformer.text_model.<name>`` and ``clip_g.transformer.text_projection.weight``."""

    def clone(self):
        """A new CLIP value sharing every weight; patching it leaves this one as it is (its
        ``patcher.model_options`` are a copy)."""
        from dataclasses import replace

        twin = replace(self, encoders=dict(self.encoders))
        if "_comfy_patcher" in self.__dict__:
            twin.patcher.model_options = copy_options(self.patcher.model_options)
        return twin

    @property
    def patcher(self) -> "ClipPatcher":
        """ComfyUI's ``clip.patcher``: what packs hand to model management, and a
        ``model_options`` dict they keep per CLIP value; weight patches go to this CLIP."""
        found = self.__dict__.get("_comfy_patcher")
        if found is None or found._clip is not self:
            found = self.__dict__["_comfy_patcher"] = ClipPatcher(self)
        return found

    @property
    def cond_stage_model(self) -> "TextEncoderFace":
        """ComfyUI's ``clip.cond_stage_model``: this value's text encoders as one model (per
        CLIP value, so options a pack sets stay until it resets them)."""
        found = self.__dict__.get("_comfy_cond_stage")
        if found is None or found._clip is not self:
            found = self.__dict__["_comfy_cond_stage"] = TextEncoderFace(self)
        return found

    def clip_layer(self, layer_idx: int) -> None:
        """Encode from hidden layer ``layer_idx`` (-1 last; ComfyUI's; changes this value)."""
        for enc in self.encoders.values():
            enc.check_layer(layer_idx)
        self.layer_idx = layer_idx

    def encode_from_tokens(self, tokens: dict, return_pooled: bool | str = False, return_dict: bool = False):
        """cond (1, 77k, D); with return_pooled (cond, pooled); with return_dict
        {"cond": ..., "pooled_output": ...}: ComfyUI's three forms."""
        if return_pooled == "unprojected":
            raise ValueError("encode_from_tokens(return_pooled='unprojected'): latentgraph encodes the pooled "
                             "output as the model reads it (projected where the model projects it)")
        if not isinstance(tokens, dict) or set(tokens) != set(self.encoders):
            got = sorted(tokens) if isinstance(tokens, dict) else type(tokens).__name__
            raise ValueError(f"encode_from_tokens: expected the tokens of this CLIP's encoders "
                             f"{sorted(self.encoders)} (from clip.tokenize), got {got}")
        cond, pooled = self.encode_tokens(tokens)
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def _comfy_names(self) -> dict[str, tuple[str, str]]:
        names = {}
        for slot, enc in self.encoders.items():
            for n, _ in enc.named_parameters():
                if n.startswith("transformer."):
                    names[f"clip_{slot}.transformer.text_model.{n[len('transformer.'):]}"] = (slot, n)
                else:  # text_projection.weight
                    names[f"clip_{slot}.transformer.{n}"] = (slot, n)
        return names

    def add_patches(self, patches: dict, strength_patch: float = 1.0, strength_model: float = 1.0) -> list:
        """Patch text-encoder weights by ComfyUI's keys (models/weight_patches.py); returns the
        keys applied. Changes this value (clone first), never the value it was cloned from."""
        from .weight_patches import apply_patches, group_patches

        names = self._comfy_names()
        accepted, grouped = group_patches(patches, names, strength_patch, strength_model)
        by_slot: dict[str, dict] = {}
        for key, entries in grouped.items():
            slot, name = names[key]
            by_slot.setdefault(slot, {})[name] = entries
        if by_slot:
            self.encoders = {**self.encoders, **{slot: apply_patches(self.encoders[slot], found, f"clip_{slot}.")
                                                 for slot, found in by_slot.items()}}
        return accepted

    def get_key_patches(self) -> dict:
        """{key: [(weight, convert)]} for each text-encoder weight as encoding uses it."""
        return {key: [(self.encoders[slot].get_parameter(name), _same)]
                for key, (slot, name) in self._comfy_names().items()}


class TextEncoderFace:
    """ComfyUI's ``clip.cond_stage_model`` (SD1ClipModel, SDXLClipModel, ...) over a CLIP value:
    ``encode_token_weights`` of tokenizer output by encoder ({"l": chunks, "g": chunks}) gives
    what ``clip.encode_from_tokens(..., return_pooled=True)`` gives; ``clip_l``/``clip_g``/``clip_h``
    encode one encoder's chunks alone; ``set_clip_options({"layer": i})`` (and the older
    ``clip_layer``) picks the hidden layer until ``reset_clip_options``. ``execution_device`` is
    accepted and left to latentgraph's placement."""

    def __init__(self, clip):
        self._clip = clip
        self._layer: int | None = None

    @property
    def slots(self) -> frozenset:
        return frozenset(self._clip.encoders)

    def __getattr__(self, name: str):
        if name.startswith("clip_") and name[5:] in self._clip.encoders:
            return EncoderFace(self, name[5:])
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r} (latentgraph's face of ComfyUI's "
                             f"clip.cond_stage_model has encode_token_weights, set_clip_options, reset_clip_options, "
                             f"clip_layer and {', '.join(f'clip_{k}' for k in self._clip.encoders)})")

    def set_clip_options(self, options: dict) -> None:
        unknown = sorted(set(options) - {"layer", "execution_device"})
        if unknown:
            raise ValueError(f"cond_stage_model.set_clip_options: latentgraph takes 'layer' and 'execution_device', "
                             f"not {unknown}")
        if "layer" in options:
            self.clip_layer(options["layer"])

    def reset_clip_options(self) -> None:
        self._layer = None

    def clip_layer(self, layer_idx: int) -> None:
        for enc in self._clip.encoders.values():
            enc.check_layer(int(layer_idx))
        self._layer = int(layer_idx)

    reset_clip_layer = reset_clip_options

    def layer(self) -> int | None:
        return self._clip.layer_idx if self._layer is None else self._layer

    def encode_token_weights(self, token_weight_pairs: dict) -> tuple:
        from dataclasses import replace

        if not isinstance(token_weight_pairs, dict) or set(token_weight_pairs) != set(self._clip.encoders):
            got = sorted(token_weight_pairs) if isinstance(token_weight_pairs, dict) else type(token_weight_pairs).__name__
            raise ValueError(f"cond_stage_model.encode_token_weights: expected the tokens of this CLIP's encoders "
                             f"{sorted(self._clip.encoders)} (from clip.tokenize), got {got}")
        return replace(self._clip, layer_idx=self.layer()).encode_tokens(token_weight_pairs)


class EncoderFace:
    """One text encoder of a ``TextEncoderFace`` (ComfyUI's ``cond_stage_model.clip_l``):
    ``encode_token_weights(chunks)`` -> (cond, pooled) of that encoder alone, on the CPU in float32."""

    def __init__(self, model: TextEncoderFace, slot: str):
        self._model, self.slot = model, slot

    def encode_token_weights(self, token_weight_pairs: list) -> tuple:
        return self._model._clip.encode_one(self.slot, token_weight_pairs, self._model.layer())


# -- CONTROL_NET: ComfyUI's ControlBase names on models/controlnet.py's Control -----------------------
class ControlFace:
    """ComfyUI's way of applying a CONTROL_NET (``cnet.copy().set_cond_hint(hint, strength,
    (start, end)).set_previous_controlnet(prev)``): ``copy`` gives a new value, the setters change
    that copy and return it, as ComfyUI's do; the attributes packs read are ours under its names."""

    def copy(self):
        from dataclasses import replace

        return replace(self, _cache={})

    def set_cond_hint(self, cond_hint, strength: float = 1.0, timestep_percent_range=(0.0, 1.0), vae=None,
                      extra_concat=()):
        """``cond_hint`` is (B, C, H, W) in 0..1 (an IMAGE moved channels-first). ``vae`` is only
        read by ControlNets that work on latents, which latentgraph does not load."""
        if extra_concat is not None and len(extra_concat):
            raise ValueError("set_cond_hint(extra_concat=...): inpainting ControlNets are not loaded by latentgraph")
        self.hint = cond_hint
        self.strength = float(strength)
        self.percent_range = (float(timestep_percent_range[0]), float(timestep_percent_range[1]))
        self._cache = {}
        return self

    def set_previous_controlnet(self, controlnet):
        self.previous = controlnet
        return self

    @property
    def cond_hint_original(self):
        return self.hint

    @property
    def timestep_percent_range(self) -> tuple[float, float]:
        return self.percent_range

    @property
    def previous_controlnet(self):
        return self.previous

    @property
    def compression_ratio(self) -> int:
        return self.compression

    @property
    def control_model(self):
        return self.net

    def get_models(self) -> list:
        """Models ComfyUI would load before sampling: latentgraph places them itself."""
        return []

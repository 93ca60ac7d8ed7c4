"""What flows on the MODEL and VAE sockets, and how CONDITIONING becomes sampling input.

CONDITIONING is ComfyUI's: a list of ``[tensor (1, T, D), options]`` where options hold
``pooled_output`` and whatever conditioning nodes set (area, strength, mask, timestep range,
SDXL sizes). CLIP is a ``models.clip.TextModel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..graph.lazy import lazy
torch = lazy("torch")

Architecture = lazy("..models.families", "Architecture")
sdxl_adm = lazy("..models.families", "sdxl_adm")
sdxl_refiner_adm = lazy("..models.families", "sdxl_refiner_adm")
Placement = lazy("..models.management", "Placement")
compile_unet = lazy("..models.compile", "compile_unet")
run_compiled = lazy("..models.compile", "run_compiled")
compiled_module = lazy("..models.compile", "compiled_module")
from ..models.comfy_faces import ModelFace, VAEFace
from ..models.patcher import ModelPatcher, call_wrapped, copy_options, new_model_options
_unclip = lazy("..models.unclip")  # MERGE_REVISION and MERGE_UNCLIP, floats: read where used
unclip_adm = lazy("..models.unclip", "unclip_adm")
UNetModel = lazy("..models.unet", "UNetModel")
AutoencoderKL = lazy("..models.vae", "AutoencoderKL")
Cond = lazy("..sampling.guidance", "Cond")
resize_mask = lazy("..sampling.guidance", "resize_mask")
LATENT_FORMATS = lazy("..sampling.schedule", "LATENT_FORMATS")
ContinuousSchedule = lazy("..sampling.schedule", "ContinuousSchedule")
DiscreteSchedule = lazy("..sampling.schedule", "DiscreteSchedule")
LatentFormat = lazy("..sampling.schedule", "LatentFormat")
from .budget import check_tensor


@dataclass
class SDModel(ModelPatcher, ModelFace):
    """A UNet ready to sample: its architecture, noise schedule, placement and ComfyUI-shaped
    ``model_options`` (models/patcher.py). LoRA nodes return a new SDModel whose UNet shares
    every unpatched tensor with this one; patch nodes ``clone()`` and call ``set_model_*``."""

    unet: UNetModel
    arch: Architecture
    schedule: DiscreteSchedule
    placement: Placement
    patches: tuple = field(default=())  # (lora name, strength) applied, for display
    model_options: dict = field(default_factory=new_model_options)
    # ComfyUI's record of add_object_patch (models/comfy_faces.py); replaced, never changed in place
    object_patches: dict = field(default_factory=dict, repr=False)

    def clone(self, **changes) -> "SDModel":
        """A new MODEL value sharing the UNet and every tensor, with its own copy of the
        options' dicts and lists (so patching it leaves this one as it is); ``changes`` as
        dataclasses.replace."""
        return replace(self, **{"model_options": copy_options(self.model_options), **changes})

    @property
    def latent_format(self) -> LatentFormat:
        """How LATENT values (the VAE's space) map to the UNet's: a schedule's own format
        (ModelSamplingContinuousEDM's Playground v2.5), else the file's, else the family's scale."""
        own = getattr(self.schedule, "latent_format", None)
        if own is not None:
            return own
        if self.arch.latent_format is not None:
            return LATENT_FORMATS[self.arch.latent_format]
        return LatentFormat(self.arch.spec.latent_scale)

    @property
    def latent_scale(self) -> float:
        """The plain scale of the latent format; refused for one with a mean and std (use
        ``latent_format.process_in/out``), rather than give a silently wrong latent."""
        fmt = self.latent_format
        if fmt.mean is not None:
            raise ValueError(f"this model's latent format ({fmt.name}) shifts each channel by its own mean and "
                             f"std, not by one scale: the node does not support it")
        return fmt.scale

    @property
    def dtype(self) -> torch.dtype:
        # an fp8-stored UNet (UNETLoader weight_dtype, models/fp8.py) computes in its compute_dtype
        return getattr(self.unet, "compute_dtype", None) or next(self.unet.parameters()).dtype

    def with_schedule(self, schedule: DiscreteSchedule) -> "SDModel":
        return self.clone(schedule=schedule)

    def apply_model(self, x, sigma, c_crossattn, y=None, c_concat=None, control=None, transformer_options=None,
                    **_) -> torch.Tensor:
        """ComfyUI's apply_model: scale the input for sigma, run the UNet at the matching
        timestep in the model's dtype, return the denoised latent in float32. The keywords are
        ComfyUI's (what a model_function_wrapper finds in args["c"])."""
        s = self.schedule
        xc = s.calculate_input(sigma, x)
        if c_concat is not None:
            xc = torch.cat([xc, c_concat.to(xc)], dim=1)
        device, dtype = xc.device, self.dtype
        t = s.timestep(sigma).float()
        args = (xc.to(dtype), t, c_crossattn.to(device, dtype), None if y is None else y.to(device, dtype),
                control, transformer_options)
        # "diffusion_model" wrappers (EasyCache) see the UNet's own inputs and output, as ComfyUI's
        out = call_wrapped(transformer_options, "diffusion_model", self._run_unet, *args)
        return s.calculate_denoised(sigma, out.float(), x)

    def _run_unet(self, *args) -> torch.Tensor:
        mode = getattr(self.placement, "compile", "off")
        backend = self.model_options.get("torch_compile")
        if backend is not None:  # TorchCompileModel: the whole UNet, compiled apart from it
            out = run_compiled(lambda: compiled_module(self.unet, backend)(*args), "full",
                               f"TorchCompileModel (backend {backend})", "bypass the TorchCompileModel node")
        elif mode == "off":
            out = self.unet(*args)
        else:  # --compile: once per UNet (in place), once per shape
            compile_unet(self.unet, mode, args[0].device)
            out = run_compiled(lambda: self.unet(*args), mode)
        return out


@dataclass
class VAEModel(VAEFace):
    """What flows on a VAE socket (with ComfyUI's VAE names: models/comfy_faces.py)."""

    vae: AutoencoderKL
    placement: Placement

    @property
    def downscale(self) -> int:
        return self.vae.downscale


def schedule_for(arch: Architecture, prediction: str | None = None,
                 zsnr: bool | None = None) -> DiscreteSchedule | ContinuousSchedule:
    """The file's own sampling (continuous EDM sigmas when it has them, ComfyUI's choice for
    Playground v2.5 and CosXL), or the discrete schedule with ``prediction``/``zsnr`` set."""
    if prediction is None and zsnr is None and arch.sigma_range is not None:
        sigma_data = 0.5 if arch.prediction == "edm" else 1.0
        return ContinuousSchedule(arch.prediction, *arch.sigma_range, sigma_data)
    return DiscreteSchedule(prediction or arch.prediction, arch.zsnr if zsnr is None else zsnr)


REVISION_DIM = 1280  # SDXL base's noise augmentor: ViT-bigG/14 image embeddings


def _unclip_y(model: SDModel, opts: dict, seed: int) -> torch.Tensor:
    """An SD2.1-unCLIP model's y: its unCLIP entries' vector, or zeros without one (ComfyUI's)."""
    entries = opts.get("unclip_conditioning")
    if entries is None:
        return torch.zeros(1, model.arch.unet.adm_in_channels)
    what = f"{model.arch.spec.label} (label_emb {model.arch.unet.adm_in_channels} wide)"
    merge = float(opts.get("unclip_noise_augment_merge", _unclip.MERGE_UNCLIP))  # an option ComfyUI reads, too
    return unclip_adm(entries, model.arch.unclip_dim, seed, merge, what)


def _model_conds(model: SDModel, opts: dict, latent_hw: tuple[int, int], prompt_type: str, seed: int = 0) -> dict:
    """Family-specific inputs besides the text tokens: SDXL's vector y (base and refiner: its
    pooled text replaced by unCLIP entries' image embedding, Revision), SD2.1-unCLIP's y. ``seed`` is
    the sampler's noise seed, which unCLIP's noise augmentation draws from."""
    family = model.arch.family
    pooled = opts.get("pooled_output")
    height, width = opts.get("height", latent_hw[0] * 8), opts.get("width", latent_hw[1] * 8)
    if model.arch.spec.unclip_dim is not None:
        return {"y": _unclip_y(model, opts, seed)}
    if opts.get("unclip_conditioning") is not None:
        if family not in ("sdxl", "sdxl_refiner"):  # ComfyUI drops the image here: say so instead
            raise ValueError(f"the conditioning has unCLIP image entries (unCLIPConditioning), which a "
                             f"{model.arch.spec.label} model cannot read: use an SD2.1-unCLIP checkpoint, or SDXL "
                             f"(Revision), or remove the unCLIPConditioning node")
        width_pooled = model.arch.unet.adm_in_channels - 256 * model.arch.spec.adm_sizes
        if width_pooled != REVISION_DIM:
            raise ValueError(f"{model.arch.spec.label} Revision (unCLIPConditioning) puts a {REVISION_DIM}-wide "
                             f"image embedding where the pooled text goes; this model's pooled text is "
                             f"{width_pooled} wide")
        pooled = unclip_adm(opts["unclip_conditioning"], REVISION_DIM, seed, _unclip.MERGE_REVISION,
                            f"{model.arch.spec.label} (Revision)")[:, :REVISION_DIM]
    if family == "sdxl":
        if pooled is None:
            raise ValueError("SDXL conditioning has no pooled output: encode it with an SDXL checkpoint's CLIP")
        return {"y": sdxl_adm(pooled, width, height, opts.get("crop_w", 0), opts.get("crop_h", 0),
                              opts.get("target_width", width), opts.get("target_height", height))}
    if family == "sdxl_refiner":
        if pooled is None:
            raise ValueError("SDXL refiner conditioning has no pooled output")
        default = 2.5 if prompt_type == "negative" else 6.0
        return {"y": sdxl_refiner_adm(pooled, width, height, opts.get("crop_w", 0), opts.get("crop_h", 0),
                                      opts.get("aesthetic_score", default))}
    return {}


def _bounds(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(h, w, y, x) of the nonzero part of a (B, h, w) mask, at least 8x8 ((8, 8, 0, 0) if empty)."""
    nz = mask.abs().amax(dim=0).nonzero()
    if nz.numel() == 0:
        return (8, 8, 0, 0)
    y0, x0 = nz.min(dim=0).values.tolist()
    y1, x1 = nz.max(dim=0).values.tolist()
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def _gligen(entry) -> tuple | None:
    """ComfyUI's ("position", GLIGEN, boxes) conditioning value -> (GLIGEN, boxes) for sampling."""
    return None if entry is None else (entry[1], list(entry[2]))


def to_conds(model: SDModel, conditioning: list, latent_shape: torch.Size, prompt_type: str,
             device: torch.device, concat: torch.Tensor | None = None, seed: int = 0) -> list[Cond]:
    """CONDITIONING entries -> sampling Conds for a latent of ``latent_shape`` (B, C, h, w);
    ``seed``: the sampler's noise seed (unCLIP noise augmentation)."""
    h, w = latent_shape[2], latent_shape[3]
    out = []
    for tensor, opts in conditioning:
        area = opts.get("area")
        if area is not None and area[0] == "percentage":
            _, ph, pw, py, px = area
            area = (max(1, round(ph * h)), max(1, round(pw * w)), round(py * h), round(px * w))
        mask = opts.get("mask")
        if mask is not None:
            mb = mask.reshape(-1, *mask.shape[-2:]).shape[0]
            check_tensor((mb, h, w), f"a conditioning mask batch of {mb} resized to the latent's {w} x {h}",
                         "a mask")
            mask = resize_mask(mask.to(device), h, w)
            if opts.get("set_area_to_bounds", False):
                area = _bounds(mask)
        start = opts.get("start_percent")
        end = opts.get("end_percent")
        extra = _model_conds(model, opts, (h, w), prompt_type, seed)
        out.append(Cond(
            context=tensor.to(device), y=extra["y"].to(device) if "y" in extra else None,
            concat=cond_concat(model, opts, latent_shape, device, concat),
            area=tuple(area) if area is not None else None, strength=float(opts.get("strength", 1.0)),
            mask=mask, mask_strength=float(opts.get("mask_strength", 1.0)),
            sigma_start=float(model.schedule.percent_to_sigma(start)) if start is not None else None,
            sigma_end=float(model.schedule.percent_to_sigma(end)) if end is not None else None,
            control=opts.get("control"), control_apply_to_uncond=bool(opts.get("control_apply_to_uncond", False)),
            gligen=_gligen(opts.get("gligen"))))
    return out


# "zero" pixels (mid-grey) in SD's latent space, per channel: the blank image inpainting
# models see where nothing is given
BLANK_LATENT = (0.8223, -0.6876, 0.6364, 0.1380)


def inpaint_concat(model: SDModel, latent: torch.Tensor, denoise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Extra input channels of an inpainting UNet (9 in): the mask and the latent it masks,
    or, without a mask, ones and a blank image (ComfyUI's rule)."""
    if model.arch.unet.in_channels != 9:
        return None
    scaled = model.latent_format.process_in(latent) if torch.count_nonzero(latent) > 0 else latent
    if denoise_mask is None:
        blank = torch.tensor(BLANK_LATENT, dtype=latent.dtype, device=latent.device)[None, :, None, None]
        return torch.cat([torch.ones_like(latent[:, :1]), blank.expand_as(latent)], dim=1)
    m = denoise_mask.reshape(-1, 1, denoise_mask.shape[-2], denoise_mask.shape[-1]).float()
    m = torch.nn.functional.interpolate(m, size=latent.shape[2:], mode="bilinear").round()
    if m.shape[0] < latent.shape[0]:
        m = m.repeat(latent.shape[0] // m.shape[0] + 1, 1, 1, 1)
    return torch.cat([m[: latent.shape[0]].to(latent), scaled], dim=1)


def cond_concat(model: SDModel, opts: dict, latent_shape: torch.Size, device: torch.device,
                default: torch.Tensor | None) -> torch.Tensor | None:
    """The extra channels of a 9-channel inpainting UNet for one conditioning entry: its own
    ``concat_latent_image`` (unscaled, as InpaintModelConditioning sets it) and ``concat_mask``
    (pixel-size) when it has both, each resized to the latent (bilinear, centre-cropped), the mask
    rounded; else ``default`` (from the latent's noise mask). Other models ignore them, as in
    ComfyUI."""
    image, mask = opts.get("concat_latent_image"), opts.get("concat_mask")
    if model.arch.unet.in_channels == 8:  # InstructPix2Pix: the image to edit (zeros without one)
        from .ip2p import ip2p_concat  # ip2p's node imports this module: import it here, not at the top

        return ip2p_concat(model, image, latent_shape, device)
    if model.arch.unet.in_channels != 9 or image is None or mask is None:
        return default
    from .image import upscale  # nodes.image imports nothing of sd: no cycle, but keep it local

    b, _, h, w = latent_shape
    image = model.latent_format.process_in(image.to(device, torch.float32))
    if image.shape[-2:] != (h, w):
        image = upscale(image, w, h, "bilinear", "center")
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]).to(device, torch.float32)
    if mask.shape[-2:] != (h, w):
        mask = upscale(mask, w, h, "bilinear", "center")
    # a batch of one serves every item; other sizes are cycled (ComfyUI interpolates between items)
    image, mask = (t.repeat(-(-b // t.shape[0]), 1, 1, 1)[:b] for t in (image, mask.round()))
    return torch.cat([mask, image], dim=1)

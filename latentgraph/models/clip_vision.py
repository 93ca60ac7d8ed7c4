"""CLIP image encoders (CLIP_VISION) and what they produce (CLIP_VISION_OUTPUT).

The network is transformers' ``CLIPVisionModelWithProjection``, built on the meta device and
loaded strictly. Files come in two layouts, both read here:

- transformers (HF): ``vision_model.*`` and ``visual_projection.weight`` (the IP-Adapter
  ``image_encoder`` files, ``CLIP-ViT-H-14-laion2B-s32B-b79K``, ``clip_vision_g``); the text
  tower of a whole CLIPModel file (``text_model.*``, ``text_projection``, ``logit_scale``) is
  skipped;
- OpenAI/OpenCLIP: ``conv1``, ``class_embedding``, ``positional_embedding``, ``ln_pre``,
  ``transformer.resblocks.*`` (fused ``in_proj``), ``ln_post``, ``proj`` (used as ``x @ P``),
  under ``visual.`` in a whole CLIP file or ``embedder.model.visual.`` in an unCLIP checkpoint.

Sizes come from the tensors' shapes, so tiny files load. What shapes cannot show: the head count
(16 for the real ViT-L/H/bigG widths 1024/1280/1664, else width // 64) and the activation
(ComfyUI's rule by depth: 31 layers or more = OpenCLIP H/bigG = gelu, else quick_gelu as OpenAI's
ViT-L); a file made by ``latentgraph make-checkpoint`` says both in its metadata, which wins.

The output's fields carry ComfyUI's names, since custom nodes read them by name; their meaning is
ComfyUI's too (see ClipVisionOutput).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from .config import JsonConfig
from .errors import CheckpointError

METADATA_KEY = "latentgraph.clip_vision"  # ClipVisionConfig as JSON, in files we write
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
REAL_HEADS = {1024: 16, 1280: 16, 1664: 16}  # ViT-L/14, ViT-H/14, ViT-bigG/14: 64-, 80- and 104-wide heads
GELU_FROM_LAYERS = 31  # ComfyUI: 32 (ViT-H) and 48 (bigG) layers are OpenCLIP's gelu models


@dataclass
class ClipVisionOutput:
    """One CLIPVisionEncode result for a batch of B images (ComfyUI's field names).

    last_hidden_state: (B, tokens, width), the encoder's last layer before the final norm
    image_embeds: (B, projection_dim), the projected, normed class token (unCLIP, Revision)
    penultimate_hidden_states: (B, tokens, width), the layer before the last (IP-Adapter plus)
    mm_projected: a multimodal projection where the model has one, else None
    """

    last_hidden_state: torch.Tensor
    image_embeds: torch.Tensor
    penultimate_hidden_states: torch.Tensor
    mm_projected: torch.Tensor | None = None

    def __getitem__(self, key: str):
        """``output["image_embeds"]``, as ComfyUI's Output object allows."""
        if key not in self.__dataclass_fields__:
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class ClipVisionConfig(JsonConfig):
    """The shape of one CLIP vision tower (a ViT with a class token and a projection)."""

    hidden_size: int = 1024  # width D
    intermediate_size: int = 4096  # MLP width
    num_layers: int = 24
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 224  # the square input side; tokens = (image_size / patch_size)^2 + 1
    projection_dim: int = 768  # width of image_embeds
    act: str = "quick_gelu"  # OpenAI's ViT-L; OpenCLIP's H and bigG use "gelu"

    @classmethod
    def vit_l(cls) -> "ClipVisionConfig":
        return cls()

    @classmethod
    def vit_h(cls) -> "ClipVisionConfig":
        return cls(1280, 5120, 32, 16, projection_dim=1024, act="gelu")

    @classmethod
    def vit_bigg(cls) -> "ClipVisionConfig":
        return cls(1664, 8192, 48, 16, projection_dim=1280, act="gelu")

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    def hf_config(self) -> CLIPVisionConfig:
        return CLIPVisionConfig(
            hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads, num_channels=3,
            image_size=self.image_size, patch_size=self.patch_size, projection_dim=self.projection_dim,
            hidden_act=self.act, layer_norm_eps=1e-5, attn_implementation="sdpa")


VARIANTS = {"vit-l": ClipVisionConfig.vit_l, "vit-h": ClipVisionConfig.vit_h, "vit-bigg": ClipVisionConfig.vit_bigg}


def resized_size(h: int, w: int, size: int, crop: bool) -> tuple[int, int]:
    """The size ComfyUI resizes an h x w image to before the crop: shortest side to ``size``
    (Python's round, as ComfyUI) when cropping, else squashed to size x size."""
    if (h, w) == (size, size):
        return h, w
    if not crop:
        return size, size
    scale = size / min(h, w)
    return round(scale * h), round(scale * w)


def clip_preprocess(image: torch.Tensor, size: int, crop: bool = True,
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> torch.Tensor:
    """IMAGE (B, H, W, C) in 0..1 -> normalised pixels (B, 3, size, size), as ComfyUI: bicubic
    resize with antialias, centre crop (or squash), quantised to 8 bits, then mean/std."""
    x = image[..., :3].movedim(-1, 1)  # (B, 3, H, W)
    h, w = x.shape[2], x.shape[3]
    if (h, w) != (size, size):
        rh, rw = resized_size(h, w, size, crop)
        x = torch.nn.functional.interpolate(x, size=(rh, rw), mode="bicubic", antialias=True)
        top, left = (rh - size) // 2, (rw - size) // 2
        x = x[:, :, top:top + size, left:left + size]
    x = torch.clip(255.0 * x, 0, 255).round() / 255.0  # the 8-bit image the CLIP was trained on
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


class ClipVision(nn.Module):
    """A CLIP vision tower that encodes IMAGE batches the way ComfyUI's CLIPVisionEncode does."""

    def __init__(self, config: ClipVisionConfig):
        super().__init__()
        self.config = config
        self.model = CLIPVisionModelWithProjection(config.hf_config())

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def work_shapes(self, image_shape: Sequence[int], crop: bool) -> list[tuple[tuple[int, ...], str]]:
        """The biggest tensors one encode makes for an image batch of ``image_shape`` (B, H, W, C),
        each with what it is, so a caller can check them against a budget before encoding."""
        b, h, w = (int(s) for s in image_shape[:3])
        c = self.config
        rh, rw = resized_size(h, w, c.image_size, crop)
        return [((b, 3, rh, rw), "a resized image batch"),
                ((b, c.num_heads, c.tokens, c.tokens), "the CLIP vision attention scores"),
                ((b, c.tokens, c.intermediate_size), "the CLIP vision MLP activations")]

    def encode_image(self, image: torch.Tensor, crop: bool = True,
                     check: Callable[[tuple, str], None] | None = None) -> ClipVisionOutput:
        """IMAGE (B, H, W, C) in 0..1 -> ClipVisionOutput. ``crop``: centre crop (ComfyUI's
        "center") or squash ("none"). ``check(shape, kind)`` is called for each of work_shapes
        first (a budget), so nothing big is allocated when it raises."""
        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(f"image: CLIP vision takes an IMAGE batch (B, H, W, 3), got shape {tuple(image.shape)}")
        if check is not None:
            for shape, kind in self.work_shapes(image.shape, crop):
                check(shape, kind)
        p = self.model.visual_projection.weight
        pixels = clip_preprocess(image.to(p.device, torch.float32), self.config.image_size, crop).to(p.dtype)
        with torch.no_grad():
            out = self.model(pixel_values=pixels, output_hidden_states=True)

        def keep(t: torch.Tensor) -> torch.Tensor:
            return t.to("cpu", torch.float32)

        # hidden_states: the embeddings, then each layer's output; [-2] is the layer before the last
        return ClipVisionOutput(keep(out.last_hidden_state), keep(out.image_embeds), keep(out.hidden_states[-2]))


# -- layouts: OpenAI/OpenCLIP <-> transformers ------------------------------------------------
_HF = "vision_model."
_OPENAI_TOP = {
    "class_embedding": "vision_model.embeddings.class_embedding",
    "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
    "positional_embedding": "vision_model.embeddings.position_embedding.weight",
    "ln_pre.weight": "vision_model.pre_layrnorm.weight", "ln_pre.bias": "vision_model.pre_layrnorm.bias",
    "ln_post.weight": "vision_model.post_layernorm.weight", "ln_post.bias": "vision_model.post_layernorm.bias",
}
_OPENAI_LAYER = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}
_HF_SKIPPED = ("text_model.", "text_projection.weight", "logit_scale", "vision_model.embeddings.position_ids")


def openai_to_hf(sd: dict, prefix: str) -> dict:
    """OpenAI/OpenCLIP vision keys under ``prefix`` -> transformers names; in_proj split into
    q/k/v thirds, ``proj`` (D, P) transposed into visual_projection.weight (P, D). A key with no
    counterpart keeps an ``unknown.`` name, for the strict load to report."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in _OPENAI_TOP:
            out[_OPENAI_TOP[name]] = value
        elif name == "proj":
            out["visual_projection.weight"] = value.t().contiguous()  # a strided copy would round differently
        elif name.startswith("transformer.resblocks."):
            idx, sub = name[len("transformer.resblocks."):].split(".", 1)
            base = f"vision_model.encoder.layers.{idx}."
            module, _, param = sub.rpartition(".")
            if module == "attn" and param in ("in_proj_weight", "in_proj_bias"):
                for letter, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{base}self_attn.{letter}_proj.{param[len('in_proj_'):]}"] = part
            elif module in _OPENAI_LAYER:
                out[f"{base}{_OPENAI_LAYER[module]}.{param}"] = value
            else:
                out["unknown." + key] = value
        else:
            out["unknown." + key] = value
    return out


def hf_to_openai(sd: dict, prefix: str = "visual.") -> dict:
    """transformers names -> the OpenAI/OpenCLIP layout under ``prefix`` (to write such files)."""
    top = {v: k for k, v in _OPENAI_TOP.items()}
    layer = {v: k for k, v in _OPENAI_LAYER.items()}
    out, qkv = {}, {}
    for key, value in sd.items():
        if key in top:
            out[prefix + top[key]] = value
        elif key == "visual_projection.weight":
            out[prefix + "proj"] = value.t().contiguous()
        elif key.startswith("vision_model.encoder.layers."):
            idx, sub = key[len("vision_model.encoder.layers."):].split(".", 1)
            module, _, param = sub.rpartition(".")
            if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                qkv.setdefault((idx, param), {})[module[-6]] = value
            else:
                out[f"{prefix}transformer.resblocks.{idx}.{layer[module]}.{param}"] = value
    for (idx, param), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{idx}.attn.in_proj_{param}"] = torch.cat(
            [parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _refuse_others(sd: dict, source: str, prefix: str) -> None:
    """Image encoders and projectors ComfyUI also reads from clip_vision/ but this CLIP does not run."""
    names = [k[len(prefix):] for k in sd if k.startswith(prefix)]

    def has(test) -> bool:
        return any(test(n) for n in names)

    found = None
    if has(lambda n: n == "style_embedding"):
        raise CheckpointError(f"{source}: a T2I style model (style_embedding), not a CLIP vision model: it loads "
                              f"with StyleModelLoader from models/style_models")
    if has(lambda n: n.startswith("model.diffusion_model.")) and not prefix:
        raise CheckpointError(f"{source}: a Stable Diffusion checkpoint, not a CLIP vision model (an unCLIP "
                              f"checkpoint's image encoder loads with unCLIPCheckpointLoader)")
    if has(lambda n: n.startswith("redux_")):
        found = "a Flux Redux image encoder (redux_up/redux_down): it is a style model for Flux, not for SD"
    elif has(lambda n: n.startswith("multi_modal_projector.")):
        found = "a CLIP ViT-L with a LLaVA multimodal projector (multi_modal_projector.*), used by video models"
    elif has(lambda n: "layer_scale" in n or n.startswith("embeddings.cls_token") or n.startswith("encoder.layer.")):
        found = "a DINOv2 image encoder (encoder.layer.*, layer_scale)"
    elif has(lambda n: n in ("vision_model.embeddings.patch_embedding.bias",) or n.startswith("vision_model.head.")):
        found = "a SigLIP vision model (patch bias, no class token)"
    if found:
        raise CheckpointError(f"{source}: {found}; only CLIP vision models (ViT-L/14, ViT-H/14, ViT-bigG/14) "
                              f"are supported")


def _describe(sd: dict, prefix: str) -> str:
    keys = [k for k in sd if k.startswith(prefix)]
    if not keys:
        return f"no keys under {prefix!r}" if prefix else "no tensors"
    return f"{len(keys)} keys such as {', '.join(sorted(keys)[:4])}"


def to_hf_layout(sd: dict, source: str, prefix: str = "") -> tuple[dict, str]:
    """The vision tower's tensors under transformers names, and the layout found ("hf" or
    "openai"). With no prefix, an OpenAI/OpenCLIP tower under ``visual.`` is found by itself."""
    if not prefix and "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
        prefix = "visual."  # a whole OpenAI/OpenCLIP model: the text tower sits at the top level
    _refuse_others(sd, source, prefix)
    if prefix + "transformer.resblocks.0.attn.in_proj_weight" in sd and prefix + "conv1.weight" in sd:
        return openai_to_hf(sd, prefix), "openai"
    if prefix + "vision_model.embeddings.patch_embedding.weight" in sd:
        out = {}
        for key, value in sd.items():
            if key.startswith(prefix) and not key[len(prefix):].startswith(_HF_SKIPPED):
                name = key[len(prefix):]
                out[name if name.startswith(_HF) or name == "visual_projection.weight" else "unknown." + key] = value
        return out, "hf"
    raise CheckpointError(
        f"{source}: not a CLIP vision model: expected vision_model.* (transformers) or conv1/transformer.resblocks.* "
        f"(OpenAI/OpenCLIP, also under visual.){f' under {prefix!r}' if prefix else ''}; found {_describe(sd, prefix)}")


def config_from_keys(sd: dict, source: str, metadata: dict | None = None) -> ClipVisionConfig:
    """A tower's config from its transformers-named tensors (and our metadata, if the file has it)."""
    need = ("vision_model.embeddings.class_embedding", "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.position_embedding.weight", "vision_model.encoder.layers.0.mlp.fc1.weight",
            "visual_projection.weight")
    missing = [k for k in need if k not in sd]
    if missing:
        raise CheckpointError(f"{source}: the CLIP vision model lacks {', '.join(missing)}")
    width = sd[need[0]].shape[0]
    patch = sd[need[1]].shape[-1]
    tokens = sd[need[2]].shape[0]
    grid = math.isqrt(max(tokens - 1, 0))
    if grid * grid != tokens - 1 or grid == 0:
        raise CheckpointError(f"{source}: the position embedding has {tokens} rows, not a class token plus a "
                              f"square grid of patches")
    layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
    heads = REAL_HEADS.get(width, max(1, width // 64))
    act = "gelu" if layers >= GELU_FROM_LAYERS else "quick_gelu"
    if metadata and METADATA_KEY in metadata:
        try:
            said = json.loads(metadata[METADATA_KEY])
            heads, act = int(said["num_heads"]), str(said["act"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{source}: its {METADATA_KEY} metadata is unreadable: {exc}") from None
    if act not in ("gelu", "quick_gelu"):
        raise CheckpointError(f"{source}: CLIP vision activation {act!r} is not gelu or quick_gelu")
    if heads < 1 or width % heads:
        raise CheckpointError(f"{source}: a CLIP vision model {width} wide cannot have {heads} attention heads")
    return ClipVisionConfig(width, sd[need[3]].shape[0], layers, heads, patch, grid * patch,
                            sd[need[4]].shape[0], act)


def load_clip_vision(state_dict: dict, source: str, prefix: str = "", metadata: dict | None = None,
                     dtype: torch.dtype | None = None) -> ClipVision:
    """A ClipVision from the tensors under ``prefix`` in either layout (see the module docstring);
    every tensor of the tower must load. Errors name ``source`` and what was found."""
    from .checkpoint import _build, _materialise_buffers, strict_load  # checkpoint imports the model zoo

    sd, layout = to_hf_layout(state_dict, source, prefix)
    config = config_from_keys(sd, source, metadata)
    model = _build("CLIP vision model", source, lambda: ClipVision(config))
    expected = {k[len("model."):] for k in model.state_dict()}
    extra = sorted(k[len("unknown."):] if k.startswith("unknown.") else prefix + k for k in sd if k not in expected)
    if extra:  # named as the file names them
        more = f" ... ({len(extra)} in all)" if len(extra) > 5 else ""
        raise CheckpointError(f"{source}: tensors a CLIP vision model ({layout} layout) has no place for: "
                              + ", ".join(extra[:5]) + more)
    inner = {f"model.{k}": v for k, v in sd.items()}

    def file_key(key: str) -> str:
        name = key[len("model."):]
        return prefix + name if layout == "hf" else f"{name} (converted from the OpenAI/OpenCLIP layout)"

    strict_load(model, inner, "CLIP vision model", source, dtype, file_key)
    _materialise_buffers(model)
    return model.eval().requires_grad_(False)


def load_clip_vision_file(path, dtype: torch.dtype | None = None) -> ClipVision:
    """A ClipVision from a file in clip_vision/ (safetensors, or a pickled state dict loaded safely)."""
    from .checkpoint import read_state_dict

    sd, metadata = read_state_dict(path)
    return load_clip_vision(sd, str(path), metadata=metadata, dtype=dtype)


# -- random towers for tests and benchmarks (latentgraph make-checkpoint --kind clip_vision) ----
LAYOUTS = ("hf", "openclip")


def tiny_config(variant: str) -> ClipVisionConfig:
    """A tiny tower with the variant's activation: 64 wide, 3 layers of 2 heads, 224-pixel input
    in 14-pixel patches (so the preprocessing is the real one), 32-wide image_embeds."""
    if variant not in VARIANTS:
        raise ValueError(f"CLIP vision variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    return ClipVisionConfig(64, 128, 3, 2, 14, 224, 32, VARIANTS[variant]().act)


def random_clip_vision(config: ClipVisionConfig, seed: int = 0) -> ClipVision:
    """transformers' initialisation under ``torch.manual_seed(seed)``, then every bias drawn from
    N(0, 0.02) and every norm weight from 1 + N(0, 0.1) (transformers leaves them 0 and 1, which
    would let a test miss a bias or norm loaded into the wrong place)."""
    torch.manual_seed(seed)
    model = ClipVision(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
            elif "norm" in name and name.endswith(".weight"):
                p.copy_(1 + torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def clip_vision_tensors(model: ClipVision, layout: str = "hf") -> dict[str, torch.Tensor]:
    """The tower's tensors as a file holds them: ``hf`` (vision_model.*, visual_projection.weight,
    as CLIPVisionModelWithProjection saves them) or ``openclip`` (visual.*, as open_clip_pytorch_model)."""
    if layout not in LAYOUTS:
        raise ValueError(f"CLIP vision layout must be one of {', '.join(LAYOUTS)}, not {layout!r}")
    sd = {k[len("model."):]: v.detach() for k, v in model.state_dict().items()}
    return sd if layout == "hf" else hf_to_openai(sd, "visual.")

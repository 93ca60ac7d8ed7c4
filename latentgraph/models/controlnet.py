"""ControlNet (the LDM/cldm layout) for SD1.x, SD2.x and SDXL: the network, reading its
files, and the per-step control it adds to the UNet.

The network is a copy of the UNet's encoder half (time embedding, input blocks, middle block)
that also sees a hint image through ``input_hint_block``; a 1x1 "zero conv" after every input
block and after the middle block gives one residual per UNet skip and one for the middle.
Attribute names mirror the checkpoint keys (``control_model.`` removed), so
``ControlNet(config).load_state_dict(sd, strict=True)`` takes a published file as it is.

``Control`` is what ControlNetApply puts into a conditioning entry: the network, the hint,
strength, timestep range and the control applied before it (chaining); at each model call the
sampler asks it for ``{"input", "middle", "output"}`` residuals (docs/model-options.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from .comfy_faces import ControlFace
from .controlnet_convert import diffusers_to_ldm, is_diffusers_controlnet
from .errors import CheckpointError
from .latent import upscale_center
from .t2i_adapter import T2IAdapter, adapter_control, build_t2i_adapter, is_t2i_adapter
from .unet import (Downsample, ResBlock, SpatialTransformer, TimestepBlock, UNetConfig, _levels, _shape,
                   _transformers, timestep_embedding)

PREFIX = "control_model."
METADATA_KEY = "latentgraph.controlnet"  # {"family", "unet": UNetConfig dict, "hint_channels"}
# input_hint_block: (out channels, stride) of each conv, SiLU between them (the odd indices)
HINT_CONVS = ((16, 1), (16, 1), (32, 2), (32, 1), (96, 2), (96, 1), (256, 2))
# context width -> family, for files without our metadata (the published full-size ones)
FAMILY_BY_CONTEXT = {768: "sd15", 1024: "sd2", 2048: "sdxl"}


@dataclass(frozen=True)
class ControlNetConfig:
    """A ControlNet's shape: the UNet it was made for (its encoder half is used) and the
    channels of the hint image."""

    unet: UNetConfig
    hint_channels: int = 3  # RGB hints; some (e.g. inpaint) ControlNets take more
    family: str = "sd15"  # sd15 | sd2 | sdxl | unknown: what the context width says

    def to_json(self) -> str:
        return json.dumps({"family": self.family, "unet": self.unet.to_dict(), "hint_channels": self.hint_channels},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ControlNetConfig":
        d = json.loads(text)
        return cls(UNetConfig.from_dict(d["unet"]), int(d["hint_channels"]), d.get("family", "unknown"))


def _zero_conv(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 1))


class ControlNet(nn.Module):
    """Residuals for a UNet from its input, timestep, context and a hint image (B, hint, 8h, 8w)."""

    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        c = config.unet
        mc, emb_dim = c.model_channels, c.model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = None
        if c.adm_in_channels is not None:
            self.label_emb = nn.Sequential(nn.Sequential(
                nn.Linear(c.adm_in_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)))
        hint, ch_in = [], config.hint_channels
        for out, stride in HINT_CONVS:
            hint += [nn.Conv2d(ch_in, out, 3, stride=stride, padding=1), nn.SiLU()]
            ch_in = out
        self.input_hint_block = nn.Sequential(*hint, nn.Conv2d(ch_in, mc, 3, padding=1))

        def transformer(ch: int, depth: int) -> SpatialTransformer:
            return SpatialTransformer(ch, c.context_dim, *c.heads(ch), depth, c.use_linear_in_transformer)

        # the UNet's input side, block for block, each followed by a zero conv
        self.input_blocks = nn.ModuleList([TimestepBlock([nn.Conv2d(c.in_channels, mc, 3, padding=1)])])
        self.zero_convs = nn.ModuleList([_zero_conv(mc)])
        ch = mc
        for level, mult in enumerate(c.channel_mult):
            for _ in range(c.num_res_blocks[level]):
                layers = [ResBlock(ch, emb_dim, mc * mult)]
                ch = mc * mult
                if c.transformer_depth[level] > 0:
                    layers.append(transformer(ch, c.transformer_depth[level]))
                self.input_blocks.append(TimestepBlock(layers))
                self.zero_convs.append(_zero_conv(ch))
            if level != len(c.channel_mult) - 1:
                self.input_blocks.append(TimestepBlock([Downsample(ch)]))
                self.zero_convs.append(_zero_conv(ch))
        self.middle_block = TimestepBlock([ResBlock(ch, emb_dim, ch), transformer(ch, c.transformer_depth_middle),
                                           ResBlock(ch, emb_dim, ch)])
        self.middle_block_out = _zero_conv(ch)

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None = None) -> dict[str, list[torch.Tensor]]:
        """x (B, C, h, w) already scaled for its sigma, hint (B, hint, 8h, 8w), timesteps (B,) ->
        {"output": one residual per input block, in block order; "middle": [one]} (ComfyUI's keys:
        the "output" residuals are added to the UNet's skips, i.e. on its output side)."""
        emb = self.time_embed(timestep_embedding(timesteps, self.config.unet.model_channels).to(x.dtype))
        guided = self.input_hint_block(hint)  # (B, mc, h, w): hint features, added after the first conv
        if (y is not None) != (self.label_emb is not None):
            raise ValueError("y (the vector conditioning) must be given exactly when the ControlNet has label_emb "
                             f"(adm_in_channels={self.config.unet.adm_in_channels})")
        if self.label_emb is not None:
            emb = emb + self.label_emb(y)
        outs, h = [], x
        for i, (block, zero) in enumerate(zip(self.input_blocks, self.zero_convs)):
            h = block(h, emb, context)
            if i == 0:
                h = h + guided
            outs.append(zero(h))
        h = self.middle_block(h, emb, context)
        return {"output": outs, "middle": [self.middle_block_out(h)]}


# -- files ----------------------------------------------------------------------------------
def _other_layout(sd: dict) -> str | None:
    """The name of a control layout no loader here reads yet, from its telltale keys
    (control-LoRA and T2I-Adapter files are dispatched by build_controlnet before this)."""
    keys = set(sd)
    if "controlnet_blocks.0.weight" in keys or "controlnet_blocks.0.linear.weight" in keys:
        return "a transformer ControlNet (controlnet_blocks.*: SD3/Flux/HunyuanDiT)"
    return None


def split_layout(sd: dict, source: str) -> dict:
    """The ControlNet tensors in the LDM layout with ``control_model.`` removed (diffusers-format
    files renamed); an error naming what was found for any other layout."""
    if PREFIX + "zero_convs.0.0.weight" in sd:
        return {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    if "zero_convs.0.0.weight" in sd:
        return {k: v for k, v in sd.items() if k != "difference"}
    if is_diffusers_controlnet(sd):  # diffusers' ControlNetModel: the same tensors, other names
        return diffusers_to_ldm({k: v for k, v in sd.items() if k != "difference"}, source)
    other = _other_layout(sd)
    if other is not None:
        raise CheckpointError(f"{source}: this is {other}, which is not supported yet; ControlNets in the "
                              f"LDM or diffusers layouts, control-LoRAs and T2I-Adapters are")
    first = ", ".join(sorted(sd)[:5]) or "no tensors"
    raise CheckpointError(f"{source}: not a ControlNet: no zero_convs.0.0.weight or control_model.zero_convs.0.0.weight "
                          f"(first keys: {first})")


def config_from_state_dict(sd: dict, metadata: dict | None = None, source: str = "") -> ControlNetConfig:
    """The ControlNetConfig of layout-stripped tensors: our metadata when the file has it (the
    head layout a state dict cannot show), else read from key names and shapes with the
    family's head convention."""
    if metadata and METADATA_KEY in metadata:
        return ControlNetConfig.from_json(metadata[METADATA_KEY])
    try:
        mc, in_channels = _shape(sd, "input_blocks.0.0.weight")[:2]
        depths, context_dim, linear = _transformers(sd)
        channel_mult, num_res_blocks, transformer_depth = _levels(sd, depths, mc)
        hint_channels = _shape(sd, "input_hint_block.0.weight")[1]
        middle = depths.get(("middle_block", 1))
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{source}: ControlNet layout not understood: {exc}") from None
    if middle is None or context_dim is None:
        raise CheckpointError(f"{source}: ControlNet without transformer blocks (no middle_block.1 or attn2) "
                              "is not supported")
    heads = dict(num_heads=-1, num_head_channels=64) if linear else dict(num_heads=8, num_head_channels=-1)
    adm = _shape(sd, "label_emb.0.0.weight")[1] if "label_emb.0.0.weight" in sd else None
    # the output side is not in the file; give it the depths the input side implies
    depth_out = tuple(d for level, d in enumerate(transformer_depth) for _ in range(num_res_blocks[level] + 1))
    unet = UNetConfig(in_channels=in_channels, model_channels=mc, channel_mult=channel_mult,
                      num_res_blocks=num_res_blocks, transformer_depth=transformer_depth,
                      transformer_depth_middle=middle, transformer_depth_output=depth_out, context_dim=context_dim,
                      use_linear_in_transformer=linear, adm_in_channels=adm, **heads)
    return ControlNetConfig(unet, hint_channels, FAMILY_BY_CONTEXT.get(context_dim, "unknown"))


def build_controlnet(sd: dict, metadata: dict | None, source: str, dtype: torch.dtype = torch.float32,
                     base_unet: nn.Module | None = None) -> ControlNet:
    """A ControlNet from a file's tensors and metadata, strictly loaded, in ``dtype`` (for a
    control-LoRA file a ``control_lora.ControlLora``, bound to the model at sampling). A "diff"
    ControlNet (a ``difference`` key) stores its weights as differences from its base model's
    UNet: ``base_unet`` gives them (DiffControlNetLoader)."""
    if is_t2i_adapter(sd):  # T2I-Adapters come through the same loader (as in ComfyUI)
        return build_t2i_adapter(sd, source, dtype)
    if "lora_controlnet" in sd:  # a control-LoRA: made over the sampled model's UNet when sampling starts
        from .control_lora import ControlLora  # (it imports this module)

        return ControlLora(sd, source, dtype)
    is_diff = "difference" in sd
    tensors = split_layout(sd, source)
    config = config_from_state_dict(tensors, metadata, source)
    if is_diff:
        if base_unet is None:
            raise CheckpointError(f"{source}: a diff ControlNet (it has a 'difference' key) holds differences from "
                                  "its base model's weights: load it with DiffControlNetLoader and that model")
        base = base_unet.state_dict()
        tensors = {k: v.float() + base[k].float().cpu() if k in base and base[k].shape == v.shape else v
                   for k, v in tensors.items()}
    with torch.device("meta"):
        net = ControlNet(config)
    try:
        net.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: ControlNet tensors do not fit the layout read from it "
                              f"({config.family}, model_channels {config.unet.model_channels}): {exc}") from None
    return net.to(dtype).eval().requires_grad_(False)


def controlnet_tensors(net: ControlNet, prefix: str = PREFIX) -> dict[str, torch.Tensor]:
    """The published layout of a ControlNet's weights (contiguous copies, ready to save)."""
    return {prefix + k: v.detach().contiguous().clone() for k, v in net.state_dict().items()}


# -- control at sampling time ---------------------------------------------------------------
def broadcast_hint(hint: torch.Tensor, batch: int, chunks: int) -> torch.Tensor:
    """A hint batch for a model batch of ``chunks`` prompts of batch // chunks each: one hint
    serves all; else each chunk gets the hints in order, cycled (ComfyUI's broadcast_image_to)."""
    if hint.shape[0] == 1:
        return hint
    per_chunk = batch // chunks
    hint = hint[:per_chunk]
    if per_chunk > hint.shape[0]:
        hint = torch.cat([hint] * (per_chunk // hint.shape[0]) + [hint[:per_chunk % hint.shape[0]]])
    return hint if hint.shape[0] == batch else torch.cat([hint] * chunks)


@dataclass(eq=False)  # compared by identity: entries batch together only with the same control
class Control(ControlFace):
    """A ControlNet applied to a conditioning entry (what ControlNetApply makes)."""

    net: ControlNet
    hint: torch.Tensor  # (B, C, H, W) in 0..1, as given (resized per latent size at sampling)
    strength: float = 1.0
    percent_range: tuple[float, float] = (0.0, 1.0)  # active from start to end of sampling
    previous: "Control | None" = None  # applied before this one; their residuals add up
    global_average_pooling: bool = False  # "shuffle" ControlNets: residuals averaged over the map
    compression: int = 8  # hint pixels per latent pixel
    _cache: dict = field(default_factory=dict, repr=False)

    def chained(self, previous: "Control | None") -> "Control":
        return replace(self, previous=previous, _cache={})

    def _hint_for(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        h, w = x.shape[-2] * self.compression, x.shape[-1] * self.compression
        key = (h, w, x.device, dtype)
        if key not in self._cache:  # once per latent size and device, not per step
            self._cache.clear()
            self._cache[key] = upscale_center(self.hint.float(), w, h).to(x.device, dtype)
        return self._cache[key]

    def get_control(self, x: torch.Tensor, sigma: torch.Tensor, c: dict, chunks: int, model) -> dict | None:
        """Residuals for one model call on x (B, C, h, w) at sigma (B,), with the call's inputs
        ``c`` (c_crossattn, y) for ``chunks`` prompts; None when no control in the chain is
        active at this sigma. ``model`` gives the noise schedule (the MODEL being sampled)."""
        prev = self.previous.get_control(x, sigma, c, chunks, model) if self.previous is not None else None
        schedule = model.schedule
        s = float(sigma.reshape(-1)[0])
        if s > schedule.percent_to_sigma(self.percent_range[0]) or s < schedule.percent_to_sigma(self.percent_range[1]):
            return prev
        net = self.net
        if hasattr(net, "bind"):  # a control_lora.ControlLora: its ControlNet is made over this model's UNet
            net = net.bind(model.unet)
        if isinstance(net, T2IAdapter):  # residuals from the hint alone, the same at every step
            return self._merge(adapter_control(self, x, chunks), prev)
        weight = next(net.parameters())
        placement = getattr(model, "placement", None)
        if getattr(placement, "memory", None) is not None:  # a VRAM budget: room made, maybe loaded in part
            placement.bring(net)
        elif weight.device != x.device:  # low-memory mode keeps weights on the CPU until they run
            net.to(x.device)
        dtype = weight.dtype
        context = c.get("crossattn_controlnet", c["c_crossattn"])
        want = net.config.unet.context_dim
        if context.shape[-1] != want:
            raise ValueError(f"the ControlNet ({net.config.family}) expects text conditioning of width {want}, the "
                             f"prompt's is {context.shape[-1]}: use a ControlNet made for this model's family")
        hint = broadcast_hint(self._hint_for(x, dtype), x.shape[0], chunks)
        y = c.get("y")
        out = net(schedule.calculate_input(sigma, x).to(dtype), hint, schedule.timestep(sigma).to(dtype),
                  context.to(x.device, dtype), None if y is None or net.label_emb is None else y.to(x.device, dtype))
        return self._merge(out, prev)

    def _merge(self, control: dict, prev: dict | None) -> dict:
        """Strength (and pooling) on this control's residuals, then the previous control's
        added entry by entry (ComfyUI's control_merge)."""
        out = {"input": [], "middle": [], "output": []}
        for key, residuals in control.items():
            for r in residuals:
                if r is not None:
                    if self.global_average_pooling:
                        r = r.mean(dim=(2, 3), keepdim=True).expand_as(r)
                    r = r * self.strength
                out[key].append(r)
        if prev is not None:
            for key in out:
                mine = out[key]
                for i, p in enumerate(prev[key]):
                    if i >= len(mine):
                        mine.append(p)
                    elif p is not None:
                        mine[i] = p if mine[i] is None else p + mine[i]
        return out


def load_controlnet_file(path: str | Path, dtype: torch.dtype = torch.float32,
                         base_unet: nn.Module | None = None) -> ControlNet:
    """Read a ControlNet file (.safetensors, or .pth/.ckpt through torch.load weights_only)."""
    from .checkpoint import read_state_dict  # checkpoint imports the whole model zoo; only here

    sd, metadata = read_state_dict(path)
    return build_controlnet(sd, metadata, str(path), dtype, base_unet)

"""Control-LoRA (Stability's control-lora files, the ``lora_controlnet`` key): a ControlNet stored
as changes to the base model's UNet.

The file holds the ControlNet-only layers (``input_hint_block``, ``zero_convs``,
``middle_block_out``) and any other layer as full ``.weight``/``.bias`` tensors, and the encoder's
big Linear/Conv2d layers as low-rank ``.up``/``.down`` pairs. The rest comes from the UNet being
sampled, so the network can only be made once that model is known: ComfyUI builds it when
sampling starts (``pre_run``), from the model's UNet config and weights. ``ControlLora.bind`` does
the same per UNet; ``Control.get_control`` calls it with the MODEL it is given.

A layer's weight is (file's weight, else the UNet's) + up.flatten(1) @ down.flatten(1), reshaped
to the weight's shape: ComfyUI's ControlLoraOps, merged once instead of at every call.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

from .controlnet import FAMILY_BY_CONTEXT, ControlNet, ControlNetConfig
from .errors import CheckpointError

MARKER = "lora_controlnet"
SUFFIXES = (".weight", ".bias", ".up", ".down")


class ControlLora:
    """A control-LoRA's tensors; ``bind(unet)`` gives the ControlNet for that UNet (cached per UNet)."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str, dtype: torch.dtype = torch.float32):
        if "input_hint_block.0.weight" not in tensors:
            raise CheckpointError(f"{source}: a control-LoRA (it has '{MARKER}') without input_hint_block.0.weight")
        odd = sorted(k for k in tensors if k != MARKER and (not k.endswith(SUFFIXES) or "__" in k))
        if odd:
            raise CheckpointError(f"{source}: control-LoRA tensors that are no layer's weight, bias, up or down: "
                                  f"{', '.join(odd[:3])}")
        self.source, self.dtype = source, dtype
        self.tensors = {k: v for k, v in tensors.items() if k != MARKER}
        self.hint_channels = int(self.tensors["input_hint_block.0.weight"].shape[1])
        self.device = torch.device("cpu")
        self._nets: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # UNet -> ControlNet

    def to(self, device) -> "ControlLora":
        """Where bound networks are put (the loaders' placement); the file's tensors stay on the CPU."""
        self.device = torch.device(device)
        return self

    def bind(self, unet: nn.Module) -> ControlNet:
        """The ControlNet this control-LoRA makes over ``unet`` (a UNetModel)."""
        net = self._nets.get(unet)
        if net is None:
            net = self._build(unet)
            self._nets[unet] = net
        return net

    def _build(self, unet: nn.Module) -> ControlNet:
        config = ControlNetConfig(unet.config, self.hint_channels, FAMILY_BY_CONTEXT.get(unet.config.context_dim,
                                                                                          "unknown"))
        with torch.device("meta"):
            net = ControlNet(config)
        base, names = unet.state_dict(), set(net.state_dict())
        extra = sorted(k for k in self.tensors if k.endswith((".weight", ".bias")) and k not in names)
        if extra:
            raise CheckpointError(f"{self.source}: control-LoRA tensors with no place in a ControlNet for this model "
                                  f"({config.family}, model_channels {config.unet.model_channels}): "
                                  f"{', '.join(extra[:3])}")
        tensors, missing = {}, []
        for key, want in net.state_dict().items():
            t = self.tensors.get(key, base.get(key))
            if t is None:
                missing.append(key)
                continue
            if tuple(t.shape) != tuple(want.shape):
                raise CheckpointError(f"{self.source}: {key} is {tuple(t.shape)} here but {tuple(want.shape)} in a "
                                      "ControlNet for this model: use the control-LoRA made for this model's family")
            tensors[key] = t.float()
        if missing:
            raise CheckpointError(f"{self.source}: the control-LoRA and the model's UNet together lack "
                                  f"{len(missing)} ControlNet tensor(s) (e.g. {', '.join(missing[:3])}): "
                                  "use the control-LoRA made for this model's family")
        self._add_low_rank(tensors)
        net.load_state_dict(tensors, strict=True, assign=True)
        return net.to(self.device, self.dtype).eval().requires_grad_(False)

    def _add_low_rank(self, tensors: dict[str, torch.Tensor]) -> None:
        """weight += up @ down for every up/down pair, in float32."""
        pairs = sorted(k[:-3] for k in self.tensors if k.endswith(".up"))
        for layer in pairs:
            key, down = layer + ".weight", self.tensors.get(layer + ".down")
            if key not in tensors or down is None:
                raise CheckpointError(f"{self.source}: {layer}.up has no {'weight' if down is not None else 'down'} "
                                      "to go with it in a ControlNet for this model")
            up = self.tensors[layer + ".up"].float()
            tensors[key] = tensors[key] + (up.flatten(1) @ down.float().flatten(1)).reshape(tensors[key].shape)
        strays = sorted(k for k in self.tensors if k.endswith(".down") and k[:-5] not in pairs)
        if strays:
            raise CheckpointError(f"{self.source}: {strays[0]} has no .up to go with it")


def make_control_lora(unet: nn.Module, rank: int = 4, seed: int = 0, hint_channels: int = 3) -> dict[str, torch.Tensor]:
    """A random control-LoRA for ``unet`` (tests and parity runs), shaped like Stability's files:
    ControlNet-only layers and every bias in full, the encoder's Linear/Conv2d weights as rank
    ``rank`` up/down pairs (Conv2d: up (out, rank, 1, 1), down (rank, in, kh, kw)), and the time
    embedding and norm weights left to come from the UNet."""
    config = ControlNetConfig(unet.config, hint_channels, FAMILY_BY_CONTEXT.get(unet.config.context_dim, "unknown"))
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in ControlNet(config).state_dict().items()}
    base = unet.state_dict()
    out = {MARKER: torch.tensor([])}
    for key, shape in shapes.items():
        if key.startswith("time_embed.") or (key in base and len(shape) == 1 and key.endswith(".weight")):
            continue  # from the UNet
        if key in base and len(shape) >= 2:
            layer, fan_in = key[: -len(".weight")], shape[1:]
            ones = (1,) * (len(shape) - 2)
            out[layer + ".up"] = torch.randn((shape[0], rank, *ones), generator=gen) * 0.05
            out[layer + ".down"] = torch.randn((rank, *fan_in), generator=gen) * 0.05
        else:
            fan = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else shape[0]
            out[key] = torch.randn(shape, generator=gen) / fan ** 0.5
    return out

"""The LyCORIS adapter kinds beyond a plain low-rank pair, with ComfyUI 0.3.64's numerics
(comfy/weight_adapter/): LoHa, LoKr, GLoRA, OFT, BOFT, DoRA's weight decomposition (on any of
them, and on LoRA) and ``set_weight``.

Each adapter maps the current weight (float32, after the LoRAs applied before it) to the new
one: ``apply(weight, strength)``. Most add a delta; DoRA, OFT, BOFT and GLoRA read the weight
itself, so the order of several LoRAs matters and follows the order of the Load LoRA nodes.
``fits(shape)`` says, before anything is computed, whether the adapter's tensors make a weight
of that shape. Shapes in comments: ``out``/``in`` are the weight's first two dimensions,
``kh, kw`` a conv kernel, ``r`` the rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# float32's machine epsilon, added to DoRA's norms (the weight is float32 when adapters run)
_EPS = torch.finfo(torch.float32).eps


def _f32(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.device, torch.float32)


def _norm_shape(magnitude: torch.Tensor, shape: torch.Size) -> tuple[int, ...] | None:
    """The shape DoRA's weight norm has for this magnitude: per output row when the magnitude's
    first dimension is the weight's (``(out, 1, ...)``), else per input column (``(1, in, ...)``)."""
    if len(shape) < 2:
        return None
    ones = (1,) * (len(shape) - 2)
    return (shape[0], 1, *ones) if magnitude.shape[0] == shape[0] else (1, shape[1], *ones)


def dora_fits(magnitude: torch.Tensor | None, shape: torch.Size) -> bool:
    if magnitude is None:
        return True
    norm = _norm_shape(magnitude, shape)
    try:
        return norm is not None and torch.broadcast_shapes(magnitude.shape, norm) == norm
    except RuntimeError:
        return False


def weight_decompose(magnitude: torch.Tensor, weight: torch.Tensor, diff: torch.Tensor, scale: float,
                     strength: float) -> torch.Tensor:
    """DoRA: ``W' = m * (W + scale * diff) / ||.||``, blended with W by ``strength``. As in
    ComfyUI, the per-output-row norm is taken of the weight *before* the delta, the
    per-input-column norm of the weight after it; float32's epsilon keeps a zero norm finite."""
    magnitude = _f32(magnitude, weight)
    adapted = weight + diff * scale
    norm_shape = _norm_shape(magnitude, weight.shape)
    if norm_shape[0] == weight.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1).reshape(norm_shape)
    else:
        norm = adapted.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1).reshape(norm_shape)
    adapted = adapted * (magnitude / (norm + _EPS))
    if strength == 1.0:
        return adapted
    return weight + strength * (adapted - weight)


@dataclass(frozen=True, eq=False)
class Adapter:
    """What every adapter shares: the keys it came from (for messages), its alpha and DoRA
    magnitude (``dora_scale``)."""

    keys: str
    alpha: float | None
    dora: torch.Tensor | None

    def _finish(self, weight: torch.Tensor, diff: torch.Tensor, scale: float, strength: float) -> torch.Tensor:
        """Add the (unscaled) delta, or renormalise with DoRA when the file carries a magnitude."""
        diff = diff.reshape(weight.shape)
        if self.dora is not None:
            return weight_decompose(self.dora, weight, diff, scale, strength)
        return weight + (strength * scale) * diff


def _factor_shape(a: torch.Tensor, b: torch.Tensor, core: torch.Tensor | None) -> tuple[int, ...] | None:
    """The shape of ``a @ b`` (flattened to 2-d) or of the Tucker product with ``core``; None if
    the ranks disagree."""
    if core is not None:
        ok = a.dim() == b.dim() == 2 and core.dim() == 4 and tuple(core.shape[:2]) == (a.shape[0], b.shape[0])
        return (a.shape[1], b.shape[1], *core.shape[2:]) if ok else None
    return (a.shape[0], b[0].numel()) if a.dim() == 2 and a.shape[1] == b.shape[0] else None


def _cp(core: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A Tucker/CP product: core (r, r, kh, kw), a (r, out), b (r, in) -> (out, in, kh, kw)."""
    return torch.einsum("ijkl,jr,ip->prkl", core, b, a)


@dataclass(frozen=True, eq=False)
class LoHa(Adapter):
    """LoHa: the Hadamard product of two low-rank products, ``(w1_a @ w1_b) * (w2_a @ w2_b)``,
    scaled by ``alpha / rank`` (rank = w1_b's first dimension). With ``t1``/``t2`` (a conv's
    Tucker cores) each factor is ``t x a x b`` and ``w*_a`` is (r, out)."""

    w1a: torch.Tensor
    w1b: torch.Tensor
    w2a: torch.Tensor
    w2b: torch.Tensor
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def fits(self, shape: torch.Size) -> bool:
        first = _factor_shape(self.w1a, self.w1b, self.t1)
        second = _factor_shape(self.w2a, self.w2b, self.t2)
        return (first is not None and first == second and math.prod(first) == shape.numel()
                and first[0] == shape[0] and dora_fits(self.dora, shape))

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        w1a, w1b, w2a, w2b = (_f32(t, weight) for t in (self.w1a, self.w1b, self.w2a, self.w2b))
        if self.t1 is not None:
            m1, m2 = _cp(_f32(self.t1, weight), w1a, w1b), _cp(_f32(self.t2, weight), w2a, w2b)
        else:
            m1, m2 = w1a @ w1b.flatten(1), w2a @ w2b.flatten(1)
        scale = self.alpha / self.w1b.shape[0] if self.alpha is not None else 1.0
        return self._finish(weight, m1 * m2, scale, strength)


@dataclass(frozen=True, eq=False)
class LoKr(Adapter):
    """LoKr: the Kronecker product ``w1 (x) w2``, each factor given whole or as a low-rank pair
    (``w2`` of a conv also as a Tucker core ``t2``). Scaled by ``alpha / rank`` when a factor is
    a pair (rank = the last such pair's, w2's before w1's, as ComfyUI), else by 1."""

    w1: torch.Tensor | None = None
    w1a: torch.Tensor | None = None
    w1b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2a: torch.Tensor | None = None
    w2b: torch.Tensor | None = None
    t2: torch.Tensor | None = None

    def fits(self, shape: torch.Size) -> bool:
        one = tuple(self.w1.shape) if self.w1 is not None else _factor_shape(self.w1a, self.w1b, None)
        two = tuple(self.w2.shape) if self.w2 is not None else _factor_shape(self.w2a, self.w2b, self.t2)
        if one is None or two is None or len(one) != 2 or len(two) not in (2, 4) \
                or (self.w1 is None and self.w1b.dim() != 2) or (self.w2 is None and self.w2b.dim() != 2):
            return False
        return (one[0] * two[0] == shape[0] and math.prod(one) * math.prod(two) == shape.numel()
                and dora_fits(self.dora, shape))

    def _rank(self) -> int | None:
        if self.w2 is None:
            return self.w2b.shape[0]
        return self.w1b.shape[0] if self.w1 is None else None

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        w1 = _f32(self.w1, weight) if self.w1 is not None else _f32(self.w1a, weight) @ _f32(self.w1b, weight)
        if self.w2 is not None:
            w2 = _f32(self.w2, weight)
        elif self.t2 is not None:
            w2 = _cp(_f32(self.t2, weight), _f32(self.w2a, weight), _f32(self.w2b, weight))
        else:
            w2 = _f32(self.w2a, weight) @ _f32(self.w2b, weight)
        if w2.dim() == 4:
            w1 = w1[:, :, None, None]
        rank = self._rank()
        scale = self.alpha / rank if self.alpha is not None and rank is not None else 1.0
        # contiguous: torch.kron cannot take the einsum's strided Tucker product (ComfyUI then skips the weight)
        return self._finish(weight, torch.kron(w1.contiguous(), w2.contiguous()), scale, strength)


@dataclass(frozen=True, eq=False)
class GLoRA(Adapter):
    """GLoRA: ``W @ a1 @ a2 + b1 @ b2`` (LyCORIS' current layout: a1 (in, r), a2 (r, in),
    b1 (out, r), b2 (r, in)) or the old one ``W @ a2 @ a1 + b2 @ b1``, told apart by the shapes
    as ComfyUI does; scaled by ``alpha / rank``."""

    a1: torch.Tensor
    a2: torch.Tensor
    b1: torch.Tensor
    b2: torch.Tensor

    def layout(self, shape: torch.Size) -> tuple[bool, int] | None:
        """(old layout?, rank), or None when the shapes fit neither layout."""
        a1, a2, b1, b2 = (t.shape for t in (self.a1, self.a2, self.b1, self.b2))
        old = b2[1] == b1[0] == a1[0] == a2[1]
        new = b2[0] == b1[1] == a1[1] == a2[0]
        if new and not (old and a2[0] == shape[0] == shape[1]):
            return False, a2[0]
        return (True, a1[0]) if old else None

    def fits(self, shape: torch.Size) -> bool:
        found = self.layout(shape) if len(shape) >= 2 else None
        if found is None:
            return False
        old, _ = found
        cols = shape[1:].numel()
        a_in, a_out = (self.a2, self.a1) if old else (self.a1, self.a2)
        b_out, b_in = (self.b2, self.b1) if old else (self.b1, self.b2)
        if old:  # W is flattened to (out, in * kh * kw) before the product
            a_ok = a_in.shape[0] == cols and a_out[0].numel() == cols
        else:  # the product runs over W's second dimension only
            a_ok = a_in.shape[0] == shape[1] and a_out[0].numel() == shape[1]
        return (a_ok and b_out.shape[0] == shape[0] and b_in[0].numel() == cols
                and dora_fits(self.dora, shape))

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        old, rank = self.layout(weight.shape)
        a1, a2, b1, b2 = (_f32(t, weight).flatten(1) for t in (self.a1, self.a2, self.b1, self.b2))
        if old:
            diff = b2 @ b1 + weight.flatten(1) @ a2 @ a1
        elif weight.dim() > 2:
            diff = torch.einsum("oi...,ij->oj...", torch.einsum("oi...,ij->oj...", weight, a1), a2)
            diff = diff + (b1 @ b2).reshape(weight.shape)
        else:
            diff = weight @ a1 @ a2 + b1 @ b2
        scale = self.alpha / rank if self.alpha is not None else 1.0
        return self._finish(weight, diff, scale, strength)


def _cayley(blocks: torch.Tensor, alpha: float) -> torch.Tensor:
    """Orthogonal blocks ``(I + Q)(I - Q)^-1`` from the skew part Q of ``blocks`` (..., b, b);
    a positive alpha bounds Q's Frobenius norm (over all blocks together)."""
    q = blocks - blocks.transpose(-1, -2)
    if alpha > 0:
        q_norm = torch.norm(q) + 1e-8
        if q_norm > alpha:
            q = q * alpha / q_norm
    eye = torch.eye(blocks.shape[-1], dtype=blocks.dtype, device=blocks.device)
    return (eye + q) @ torch.linalg.inv(eye - q)


@dataclass(frozen=True, eq=False)
class OFT(Adapter):
    """OFT: the weight's output rows, in blocks of b, turned by orthogonal blocks R made from
    ``oft_blocks`` (k, b, b); alpha (if > 0) bounds the rotation. As in ComfyUI 0.3.64 the delta
    ``(R - I)^T W`` is multiplied by the strength twice, and ``rescale`` is not used."""

    blocks: torch.Tensor

    def fits(self, shape: torch.Size) -> bool:
        k, b, b2 = self.blocks.shape
        return b == b2 and len(shape) >= 1 and k * b == shape[0] and dora_fits(self.dora, shape)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        alpha = self.alpha or 0.0
        blocks = _f32(self.blocks, weight)
        k, b, _ = blocks.shape
        r = _cayley(blocks, alpha)
        eye = torch.eye(b, dtype=weight.dtype, device=weight.device)
        rows = weight.reshape(k, b, *weight.shape[1:])
        diff = torch.einsum("knm,kn...->km...", r * strength - strength * eye, rows).reshape(weight.shape)
        if self.dora is not None:
            return weight_decompose(self.dora, weight, diff, alpha, strength)
        return weight + strength * diff


@dataclass(frozen=True, eq=False)
class BOFT(Adapter):
    """BOFT: m butterfly stages of orthogonal blocks (``oft_blocks`` (m, k, b, b)), each
    stage mixing rows 2^i * b/2 apart; then ``rescale`` (a per-row factor) if given. With a
    strength other than 1 each stage is blended with I and the delta is scaled again (ComfyUI)."""

    blocks: torch.Tensor
    rescale: torch.Tensor | None = None

    def fits(self, shape: torch.Size) -> bool:
        m, k, b, b2 = self.blocks.shape
        if b != b2 or b % 2 or len(shape) < 1 or k * b != shape[0] or shape[0] % (2 ** max(m - 1, 0) * b):
            return False
        if self.rescale is not None:
            try:
                if torch.broadcast_shapes(self.rescale.shape, shape) != shape:
                    return False
            except RuntimeError:
                return False
        return dora_fits(self.dora, shape)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        alpha = self.alpha or 0.0  # ComfyUI needs an alpha here; without one it skips the weight
        blocks = _f32(self.blocks, weight)
        m, _, b, _ = blocks.shape
        r = _cayley(blocks, alpha)
        eye = torch.eye(b, dtype=weight.dtype, device=weight.device)
        x = weight
        for i in range(m):
            stage = r[i] if strength == 1 else r[i] * strength + (1 - strength) * eye
            span = 2 ** i * (b // 2)
            # gather rows 'span' apart into blocks of b, turn each block, put the rows back
            x = x.unflatten(0, (-1, 2, span)).transpose(1, 2).flatten(0, 2).unflatten(0, (-1, b))
            x = torch.einsum("bij,bj...->bi...", stage, x)
            x = x.flatten(0, 1).unflatten(0, (-1, span, 2)).transpose(1, 2).flatten(0, 2)
        if self.rescale is not None:
            x = x * _f32(self.rescale, weight)
        diff = x - weight
        if self.dora is not None:
            return weight_decompose(self.dora, weight, diff, alpha, strength)
        return weight + strength * diff


@dataclass(frozen=True, eq=False)
class SetWeight(Adapter):
    """``set_weight``: the weight replaced outright (any strength but 0, as ComfyUI)."""

    value: torch.Tensor

    def fits(self, shape: torch.Size) -> bool:
        return self.value.numel() == shape.numel()

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        return _f32(self.value, weight).reshape(weight.shape).clone()


# -- building adapters from a file's keys -----------------------------------------------------
# key suffix -> role, for the kinds above (lora.py's table holds the LoRA pair's and the diffs')
ADAPTER_SUFFIXES = tuple(
    [(f".hada_{s}", f"hada_{s}") for s in ("w1_a", "w1_b", "w2_a", "w2_b", "t1", "t2")]
    + [(f".lokr_{s}", f"lokr_{s}") for s in ("w1", "w2", "w1_a", "w1_b", "w2_a", "w2_b", "t2")]
    + [(f".{s}.weight", f"glora_{s}") for s in ("a1", "a2", "b1", "b2")]
    + [(".oft_blocks", "oft_blocks"), (".rescale", "rescale"), (".set_weight", "set_weight")])
# the kind each role belongs to (for the format line and for telling several deltas apart)
ADAPTER_KIND = {role: ("LoHa" if role.startswith("hada") else "LoKr" if role.startswith("lokr")
                       else "GLoRA" if role.startswith("glora") else "OFT" if role in ("oft_blocks", "rescale")
                       else "full weights (set_weight)") for _, role in ADAPTER_SUFFIXES}


class IncompleteAdapter(ValueError):
    """A module's keys of one kind lack a part (lora.py reports them as not applied)."""


def _need(roles: dict[str, str], sd: dict, *names: str) -> list[torch.Tensor]:
    missing = [n for n in names if n not in roles]
    if missing:
        raise IncompleteAdapter(f"an incomplete {ADAPTER_KIND[names[0]]} (no {', '.join(missing)})")
    return [sd[roles[n]] for n in names]


def _opt(roles: dict[str, str], sd: dict, name: str) -> torch.Tensor | None:
    return sd[roles[name]] if name in roles else None


def _lokr(roles: dict, sd: dict, keys: str, alpha, dora) -> Adapter:
    w1, w2 = _opt(roles, sd, "lokr_w1"), _opt(roles, sd, "lokr_w2")
    w1a, w1b = _need(roles, sd, "lokr_w1_a", "lokr_w1_b") if w1 is None else (None, None)
    w2a, w2b = _need(roles, sd, "lokr_w2_a", "lokr_w2_b") if w2 is None else (None, None)
    t2 = _opt(roles, sd, "lokr_t2") if w2 is None else None
    return LoKr(keys, alpha, dora, w1, w1a, w1b, w2, w2a, w2b, t2)


def build_adapter(kind: str, roles: dict[str, str], sd: dict, alpha: float | None,
                  dora: torch.Tensor | None) -> tuple[Adapter, set[str]]:
    """The adapter of ``kind`` made from one module's keys ({role: key}), and the roles it uses.
    Raises IncompleteAdapter when a part is missing, ValueError naming the keys when one is of
    the wrong rank of tensor."""
    used = {r for r in roles if ADAPTER_KIND.get(r) == kind} | {"alpha", "dora_scale"}
    keys = ", ".join(f"{roles[r]} {tuple(sd[roles[r]].shape)}" for r in sorted(roles) if r in used and r != "alpha")
    if kind == "LoHa":
        w1a, w1b, w2a, w2b = _need(roles, sd, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
        t1, t2 = _opt(roles, sd, "hada_t1"), _opt(roles, sd, "hada_t2")
        if (t1 is None) != (t2 is None):
            raise IncompleteAdapter("an incomplete LoHa (one Tucker core of hada_t1, hada_t2)")
        adapter: Adapter = LoHa(keys, alpha, dora, w1a, w1b, w2a, w2b, t1, t2)
    elif kind == "LoKr":
        adapter = _lokr(roles, sd, keys, alpha, dora)
    elif kind == "GLoRA":
        adapter = GLoRA(keys, alpha, dora, *_need(roles, sd, "glora_a1", "glora_a2", "glora_b1", "glora_b2"))
    elif kind == "OFT":
        (blocks,) = _need(roles, sd, "oft_blocks")
        if blocks.dim() == 3:  # OFT; ComfyUI 0.3.64's OFT leaves its rescale unused
            used.discard("rescale")
            adapter = OFT(keys, alpha, dora, blocks)
        elif blocks.dim() == 4:
            adapter = BOFT(keys, alpha, dora, blocks, _opt(roles, sd, "rescale"))
        else:
            raise ValueError(f"{keys}: oft_blocks must be (blocks, b, b) for OFT or (stages, blocks, b, b) "
                             f"for BOFT")
    else:
        used.discard("dora_scale")
        adapter = SetWeight(keys, alpha, dora, *_need(roles, sd, "set_weight"))
    for name in ("t1", "t2", "w1", "w2", "w1a", "w1b", "w2a", "w2b", "a1", "a2", "b1", "b2"):
        t = getattr(adapter, name, None)
        if t is not None and t.dim() < 2:
            raise ValueError(f"{keys}: {name} is a {t.dim()}-d tensor, not a matrix")
    return adapter, used & set(roles)

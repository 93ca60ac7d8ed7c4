"""HypernetworkLoader: an A1111 hypernetwork applied as ComfyUI does, as attn1/attn2 patches
on a clone of the MODEL (models/hypernetwork.py). Widths the file has MLPs for that no
attention of this model uses are reported on the node as a warning; a file none of whose
widths fits is an error."""

from __future__ import annotations

import logging
from typing import Annotated

from ..graph import MODEL, Combo, Float, NodeContext, Result, node
from ..graph.lazy import lazy
HypernetworkPatch = lazy("..models.hypernetwork", "HypernetworkPatch")
attention_widths = lazy("..models.hypernetwork", "attention_widths")
build_hypernetwork = lazy("..models.hypernetwork", "build_hypernetwork")
read_hypernetwork = lazy("..models.hypernetwork", "read_hypernetwork")
from .loaders import missing_model, model_files, model_identity
from .sd import SDModel

log = logging.getLogger("latentgraph.nodes")


def _check(hypernetwork_name, env):
    return missing_model(env, "hypernetworks", "hypernetwork", hypernetwork_name)


def _key(hypernetwork_name, env):
    return model_identity(env, "hypernetworks", hypernetwork_name)


@node(category="loaders", outputs=[MODEL], fingerprint=_key, validate=_check,
      python_module="comfy_extras.nodes_hypernetwork")
def HypernetworkLoader(
    model: Annotated[SDModel, MODEL],
    hypernetwork_name: Annotated[str, Combo(model_files("hypernetworks"))],
    strength: Annotated[float, Float(1.0, min=-10.0, max=10.0, step=0.01)],
    ctx: NodeContext,
) -> Result:
    """Applies a hypernetwork: keys and values entering each attention of a width it has MLPs
    for become ``x + strength * mlp(x)``."""
    path = ctx.env.find_model("hypernetworks", hypernetwork_name)
    # read per run of the node (the result cache keeps the output); not in the model cache,
    # whose few slots are for checkpoints
    net = build_hypernetwork(read_hypernetwork(path), hypernetwork_name)
    widths = attention_widths(model.unet)
    used = sorted(w for w in net.mlps if w in widths)
    unused = sorted(w for w in net.mlps if w not in widths)
    if not used:
        raise ValueError(f"{hypernetwork_name}: its MLPs are for attention widths {', '.join(map(str, unused))}, "
                         f"but this model's attentions take {', '.join(map(str, sorted(widths)))}: a hypernetwork "
                         f"for another model?")
    patch = HypernetworkPatch(net, strength)
    m = model.clone()
    m.set_model_attn1_patch(patch)
    m.set_model_attn2_patch(patch)
    if not unused:
        return Result(m)
    warning = (f"{hypernetwork_name}: MLPs for widths {', '.join(map(str, unused))} match no attention of this "
               f"model (its widths: {', '.join(map(str, sorted(widths)))}) and are not used; those for "
               f"{', '.join(map(str, used))} are")
    log.warning("%s (node %s): %s", ctx.class_type, ctx.node_id, warning)
    return Result(m, ui={"warnings": [warning]})

"""RebatchLatents and RebatchImages: a list of batches in, a list of batches of ``batch_size``
out (ComfyUI's nodes_rebatch, input and output lists). A node downstream then runs once per
batch, so a large batch can be processed in parts."""

from __future__ import annotations

from typing import Annotated, Any

from ..graph.lazy import lazy
torch = lazy("torch")
F = lazy("torch.nn.functional")

from ..graph import IMAGE, LATENT, Int, Output, node

Tensor = lazy("torch", "Tensor")


def _parts(latent: dict, offset: int) -> tuple[Tensor, Tensor, list]:
    """(samples, a mask per item at 8x the latent's size, batch indices) of one LATENT; items
    without noise_mask get a mask of ones. A mask of another size is resized (bilinear) so the
    masks of a run can be joined (ComfyUI computes this resize but drops it)."""
    samples = latent["samples"]
    b, _, h, w = samples.shape
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((b, 1, h * 8, w * 8))
    mask = mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1])
    if mask.shape[-2:] != (h * 8, w * 8):
        mask = F.interpolate(mask.float(), size=(h * 8, w * 8), mode="bilinear")
    if mask.shape[0] < b:
        mask = mask.repeat((b - 1) // mask.shape[0] + 1, 1, 1, 1)[:b]
    indices = list(latent.get("batch_index", range(offset, offset + b)))
    return samples, mask, indices


def _emit(out: list, samples: Tensor, mask: Tensor, indices: list, batch_size: int) -> None:
    """Cut a run of one size into batches of batch_size (the last may be smaller); a mask of all
    ones is dropped, as it masks nothing."""
    for start in range(0, samples.shape[0], batch_size):
        item = {"samples": samples[start:start + batch_size], "noise_mask": mask[start:start + batch_size],
                "batch_index": indices[start:start + batch_size]}
        if item["noise_mask"].mean() == 1.0:
            del item["noise_mask"]
        out.append(item)


@node(category="latent/batch", display_name="Rebatch Latents", input_is_list=True,
      outputs=[Output("LATENT", is_list=True)], python_module="comfy_extras.nodes_rebatch")
def RebatchLatents(latents: Annotated[list, LATENT],
                   batch_size: Annotated[Any, Int(1, min=1, max=4096)]) -> list:
    """Joins consecutive latents of the same size and cuts them into batches of batch_size;
    a change of size starts a new batch. Items keep (or get) their batch indices, so sampling
    gives each the noise it would have had in one batch."""
    size = batch_size[0]  # an input list: every input arrives as a list (ComfyUI takes the first)
    out: list = []
    run: list[tuple[Tensor, Tensor, list]] = []
    processed = 0
    for latent in latents:
        part = _parts(latent, processed)
        processed += len(part[2])
        if run and part[0].shape[-2:] != run[0][0].shape[-2:]:
            _emit(out, torch.cat([p[0] for p in run]), torch.cat([p[1] for p in run]),
                  [i for p in run for i in p[2]], size)
            run = []
        run.append(part)
    if run:
        _emit(out, torch.cat([p[0] for p in run]), torch.cat([p[1] for p in run]), [i for p in run for i in p[2]], size)
    return out


@node(category="image/batch", display_name="Rebatch Images", input_is_list=True,
      outputs=[Output("IMAGE", is_list=True)], python_module="comfy_extras.nodes_rebatch")
def RebatchImages(images: Annotated[list, IMAGE], batch_size: Annotated[Any, Int(1, min=1, max=4096)]) -> list:
    """Every image of every batch in order, regrouped into batches of batch_size (the last may
    be smaller). Images joined into one batch must have the same size."""
    size = batch_size[0]  # an input list: every input arrives as a list (ComfyUI takes the first)
    singles = [img[i:i + 1] for img in images for i in range(img.shape[0])]
    out = []
    for start in range(0, len(singles), size):
        chunk = singles[start:start + size]
        shapes = {tuple(t.shape[1:]) for t in chunk}
        if len(shapes) > 1:
            raise ValueError(f"RebatchImages: images {start} to {start + len(chunk) - 1} would share a batch but have "
                             f"different sizes {sorted(shapes)}; use batch_size 1 or resize them first")
        out.append(torch.cat(chunk, dim=0))
    return out

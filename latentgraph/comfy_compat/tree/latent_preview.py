"""ComfyUI's ``latent_preview``: the sampling callback that reports progress to the running node."""

from __future__ import annotations

from latentgraph.comfy_compat import runtime


MAX_PREVIEW_RESOLUTION = 512  # ComfyUI's --preview-size default


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class LatentPreviewer:
    """The base of ComfyUI's previewers, which packs subclass (VHS's animated previews): a
    subclass gives ``decode_latent_to_preview(x0)``. latentgraph's own sampling nodes make
    their previews themselves; ``get_previewer`` gives packs none."""

    def decode_latent_to_preview(self, x0):
        pass

    def decode_latent_to_preview_image(self, preview_format, x0):
        return ("JPEG", self.decode_latent_to_preview(x0), MAX_PREVIEW_RESOLUTION)


def prepare_callback(model, steps: int, x0_output_dict: dict | None = None):
    """A k-diffusion style callback ``(step, x0, x, total_steps)`` that ticks the running
    node's progress (and keeps the last x0 in ``x0_output_dict['x0']`` when given)."""
    from comfy.utils import ProgressBar  # the tree's own module, as ComfyUI's does

    bar = ProgressBar(steps)

    def callback(step, x0, x, total_steps):
        if x0_output_dict is not None:
            x0_output_dict["x0"] = x0
        bar.update_absolute(step + 1, total_steps)
    return callback


def get_previewer(device, latent_format):
    return None

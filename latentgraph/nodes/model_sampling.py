"""ModelSamplingContinuousEDM and ModelSamplingContinuousV: sample a model over continuous
noise levels (Karras et al. 2022) instead of SD's 1000 discrete timesteps, as ComfyUI's nodes of
those names do (comfy_extras/nodes_model_advanced.py). A checkpoint that needs this sampling
(Playground v2.5, CosXL) gets it at load from its marker tensors; these nodes set it by hand."""

from __future__ import annotations

from typing import Annotated

from ..graph import MODEL, Combo, Float, node
from ..graph.lazy import lazy, unwrap
PLAYGROUND_V25 = lazy("..sampling.schedule", "PLAYGROUND_V25")
ContinuousSchedule = lazy("..sampling.schedule", "ContinuousSchedule")
from .sd import SDModel

MODULE = "comfy_extras.nodes_model_advanced"
# sampling -> (prediction, sigma_data, latent format or None to keep the model's)
EDM_SAMPLINGS = {"v_prediction": ("v", 1.0, None), "edm": ("edm", 0.5, None),
                 "edm_playground_v2.5": ("edm", 0.5, PLAYGROUND_V25), "eps": ("eps", 1.0, None)}


def _sigma(default: float) -> Float:
    return Float(default, min=0.0, max=1000.0, step=0.001, round=False)


def _continuous(node_name: str, model: SDModel, sampling: str, sigma_max: float, sigma_min: float,
                timing: str) -> SDModel:
    if sampling == "cosmos_rflow":
        raise ValueError(f"{node_name}: sampling 'cosmos_rflow' is the rectified-flow sampling of NVIDIA's Cosmos "
                         f"video models, which latentgraph does not load; for an SD model choose v_prediction, "
                         f"edm, edm_playground_v2.5 or eps")
    if not 0.0 < sigma_min < sigma_max:
        raise ValueError(f"{node_name}: sigma_min ({sigma_min:g}) must be above 0 and below sigma_max "
                         f"({sigma_max:g}): the sigmas are spaced evenly in log(sigma)")
    prediction, sigma_data, latent_format = EDM_SAMPLINGS[sampling]
    latent_format = unwrap(latent_format)  # a lazy import inside the table: never rebound
    return model.with_schedule(ContinuousSchedule(prediction, sigma_min, sigma_max, sigma_data, timing, latent_format))


@node(category="advanced/model", display_name="ModelSamplingContinuousEDM", outputs=[MODEL], python_module=MODULE)
def ModelSamplingContinuousEDM(
    model: Annotated[SDModel, MODEL],
    sampling: Annotated[str, Combo(["v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow"])],
    sigma_max: Annotated[float, _sigma(120.0)],
    sigma_min: Annotated[float, _sigma(0.002)],
) -> SDModel:
    """Continuous EDM sigmas (timestep 0.25 log sigma) with the chosen preconditioning;
    edm_playground_v2.5 also sets Playground v2.5's latent mean and std."""
    return _continuous("ModelSamplingContinuousEDM", model, sampling, sigma_max, sigma_min, "edm")


@node(category="advanced/model", display_name="ModelSamplingContinuousV", outputs=[MODEL], python_module=MODULE)
def ModelSamplingContinuousV(
    model: Annotated[SDModel, MODEL],
    sampling: Annotated[str, Combo(["v_prediction"])],
    sigma_max: Annotated[float, _sigma(500.0)],
    sigma_min: Annotated[float, _sigma(0.03)],
) -> SDModel:
    """Continuous sigmas with the timestep atan(sigma) * 2 / pi, v-prediction."""
    return _continuous("ModelSamplingContinuousV", model, sampling, sigma_max, sigma_min, "v")

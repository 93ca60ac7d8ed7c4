"""ComfyUI's ``comfy.patcher_extension``: the names of the wrapper and callback points a pack
hands to ``model.add_wrapper_with_key`` / ``add_callback_with_key``. latentgraph runs the
wrappers it has points for (outer_sample, predict_noise, diffusion_model: models/patcher.py);
adding one for another point is refused there, naming the point. A wrapper is called as
``wrapper(executor, *args)`` and ``executor(*args)`` runs the next one; ComfyUI's
WrapperExecutor object (``executor.class_obj``...) is not provided."""

from latentgraph.comfy_compat import runtime


def __getattr__(name: str):
    raise runtime.missing(__name__, name)


class CallbacksMP:
    ON_CLONE = "on_clone"
    ON_LOAD = "on_load_after"
    ON_DETACH = "on_detach_after"
    ON_CLEANUP = "on_cleanup"
    ON_PRE_RUN = "on_pre_run"
    ON_PREPARE_STATE = "on_prepare_state"
    ON_APPLY_HOOKS = "on_apply_hooks"
    ON_REGISTER_ALL_HOOK_PATCHES = "on_register_all_hook_patches"
    ON_INJECT_MODEL = "on_inject_model"
    ON_EJECT_MODEL = "on_eject_model"


class WrappersMP:
    OUTER_SAMPLE = "outer_sample"
    PREPARE_SAMPLING = "prepare_sampling"
    SAMPLER_SAMPLE = "sampler_sample"
    PREDICT_NOISE = "predict_noise"
    CALC_COND_BATCH = "calc_cond_batch"
    APPLY_MODEL = "apply_model"
    DIFFUSION_MODEL = "diffusion_model"

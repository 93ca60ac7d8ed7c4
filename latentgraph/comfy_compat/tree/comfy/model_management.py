"""ComfyUI's ``comfy.model_management``: devices, dtypes, memory and interrupts, answered from
the running node's Environment and latentgraph's model placement. Loading and unloading are
latentgraph's own business (models/management.py, models/vram.py): the functions that ask for
them are accepted and do what is needed here (a model is moved when a node runs it)."""

from __future__ import annotations

from enum import Enum

import torch

from latentgraph.comfy_compat import runtime
from latentgraph.graph.errors import Interrupted

InterruptProcessingException = Interrupted  # what a pack catches or raises to stop a run
OOM_EXCEPTION = torch.cuda.OutOfMemoryError
XFORMERS_IS_AVAILABLE = False
XFORMERS_ENABLED_VAE = False


class VRAMState(Enum):
    DISABLED = 0  # no GPU: ComfyUI's state on a CPU run
    NO_VRAM = 1
    LOW_VRAM = 2
    NORMAL_VRAM = 3
    HIGH_VRAM = 4
    SHARED = 5


class CPUState(Enum):
    GPU = 0
    CPU = 1
    MPS = 2


def __getattr__(name: str):
    if name == "vram_state":
        if get_torch_device().type == "cpu":
            return VRAMState.DISABLED
        return VRAMState.LOW_VRAM if runtime.current_env().lowvram else VRAMState.NORMAL_VRAM
    if name == "cpu_state":
        return CPUState.CPU if get_torch_device().type == "cpu" else CPUState.GPU
    raise runtime.missing(__name__, name)


def get_torch_device() -> torch.device:
    from latentgraph.models.management import resolve_device

    return resolve_device(runtime.current_env().device)


def intermediate_device() -> torch.device:
    return torch.device("cpu")


def unet_offload_device() -> torch.device:
    return torch.device("cpu")


def text_encoder_offload_device() -> torch.device:
    return torch.device("cpu")


def vae_offload_device() -> torch.device:
    return torch.device("cpu")


def unet_inital_load_device(parameters=0, dtype=None) -> torch.device:
    return get_torch_device()


def text_encoder_device() -> torch.device:
    return get_torch_device()


def vae_device() -> torch.device:
    return get_torch_device()


def is_device_cpu(device) -> bool:
    return torch.device(device).type == "cpu"


def is_device_mps(device) -> bool:
    return torch.device(device).type == "mps"


def is_device_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def cpu_mode() -> bool:
    return get_torch_device().type == "cpu"


def mps_mode() -> bool:
    return get_torch_device().type == "mps"


def is_nvidia() -> bool:
    return get_torch_device().type == "cuda" and torch.version.cuda is not None


def xformers_enabled() -> bool:
    return False


def xformers_enabled_vae() -> bool:
    return False


def pytorch_attention_enabled() -> bool:
    """ComfyUI switches PyTorch attention on for the GPUs it knows, not on a CPU run."""
    return get_torch_device().type == "cuda"


def sage_attention_enabled() -> bool:
    return False


def flash_attention_enabled() -> bool:
    return False


def _run_dtype(device) -> torch.dtype:
    """The dtype latentgraph places UNets in for the bound Environment and device."""
    from latentgraph.models.management import resolve_dtypes

    return resolve_dtypes(torch.device(device or get_torch_device()), runtime.current_env().dtype)["unet"]


def unet_dtype(device=None, model_params=0, supported_dtypes=None, weight_dtype=None) -> torch.dtype:
    return _run_dtype(device)


def unet_manual_cast(weight_dtype, inference_device, supported_dtypes=None):
    """The dtype to compute in when weights of ``weight_dtype`` cannot be computed in as they
    are on ``inference_device`` (None: they can), by ComfyUI's rule."""
    if weight_dtype in (torch.float32, torch.float64):
        return None
    fp16, bf16 = should_use_fp16(inference_device), should_use_bf16(inference_device)
    if (weight_dtype == torch.float16 and fp16) or (weight_dtype == torch.bfloat16 and bf16):
        return None
    for dtype in supported_dtypes or (torch.float16, torch.bfloat16, torch.float32):
        if (dtype == torch.float16 and fp16) or (dtype == torch.bfloat16 and bf16):
            return dtype
    return torch.float32


def text_encoder_dtype(device=None) -> torch.dtype:
    """fp16, ComfyUI's default for text encoders on every device, unless --dtype says otherwise."""
    chosen = runtime.current_env().dtype
    return {"fp32": torch.float32, "bf16": torch.bfloat16}.get(chosen, torch.float16)


def vae_dtype(device=None, allowed_dtypes=None) -> torch.dtype:
    return torch.float32


def should_use_fp16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return _run_dtype(device) == torch.float16


def should_use_bf16(device=None, model_params=0, prioritize_performance=True, manual_cast=False) -> bool:
    return _run_dtype(device) == torch.bfloat16


def supports_dtype(device, dtype) -> bool:
    """ComfyUI's rule: fp32 everywhere, fp16 and bf16 on a GPU only."""
    if dtype == torch.float32:
        return True
    return torch.device(device).type != "cpu" and dtype in (torch.float16, torch.bfloat16)


def device_supports_non_blocking(device) -> bool:
    return torch.device(device).type != "mps"


def dtype_size(dtype) -> int:
    return 2 if dtype in (torch.float16, torch.bfloat16) else getattr(dtype, "itemsize", 4)


def get_torch_device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} {torch.cuda.get_device_name(device)} : {torch.cuda.get_allocator_backend()}"
    return device.type


def is_intel_xpu() -> bool:
    return get_torch_device().type == "xpu"


def get_autocast_device(dev) -> str:
    return getattr(dev, "type", "cuda")


def cast_to_device(tensor: torch.Tensor, device, dtype, copy: bool = False) -> torch.Tensor:
    out = tensor.to(device=device, dtype=dtype)
    return out.clone() if copy and out is tensor else out


def get_free_memory(dev=None, torch_free_too: bool = False):
    dev = torch.device(dev) if dev is not None else get_torch_device()
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return (free, free) if torch_free_too else free
    free = _ram("MemAvailable", "SC_AVPHYS_PAGES")
    return (free, free) if torch_free_too else free


def get_total_memory(dev=None, torch_total_too: bool = False):
    dev = torch.device(dev) if dev is not None else get_torch_device()
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory
    else:
        total = _ram("MemTotal", "SC_PHYS_PAGES")
    return (total, total) if torch_total_too else total


def _ram(field: str, sysconf: str) -> int:
    """Bytes of RAM from /proc/meminfo (Linux), else from sysconf."""
    import os

    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf(sysconf)


def soft_empty_cache(force: bool = False) -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def free_memory(memory_required, device, keep_loaded=()) -> list:
    """Accepted: latentgraph frees device memory itself when a model needs room (models/vram.py)."""
    return []


def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                    force_full_load=False) -> None:
    """Accepted: a MODEL value moves to the device when a node runs it (models/management.py)."""


def load_model_gpu(model) -> None:
    load_models_gpu([model])


def unload_all_models() -> None:
    soft_empty_cache()


def cleanup_models(keep_clone_weights_loaded=False) -> None:
    """Accepted: unused models leave the cache on its own rules (and /free)."""


def cleanup_models_gc() -> None:
    import gc

    gc.collect()


def loaded_models(only_currently_used=False) -> list:
    return []


def module_size(module: torch.nn.Module) -> int:
    return sum(t.nelement() * t.element_size() for t in module.state_dict().values())


def interrupt_current_processing(value: bool = True) -> None:
    """Ask the running node's run to stop (its next progress tick or node boundary raises)."""
    ctx = runtime.current_node()
    if ctx is not None and value:
        ctx._stop.set()


def processing_interrupted() -> bool:
    ctx = runtime.current_node()
    return bool(ctx is not None and ctx._stop.is_set())


def throw_exception_if_processing_interrupted() -> None:
    ctx = runtime.current_node()
    if ctx is not None:
        ctx.check_interrupt()


def maximum_vram_for_weights(device=None) -> int:
    return get_total_memory(device) * 88 // 100


def total_vram_mib() -> float:
    return get_total_memory() / (1024 * 1024)


def extra_reserved_memory() -> int:
    return 400 * 1024 * 1024


def minimum_inference_memory() -> float:
    return (1024 * 1024 * 1024) * 0.8 + extra_reserved_memory()  # ComfyUI's figure, a float

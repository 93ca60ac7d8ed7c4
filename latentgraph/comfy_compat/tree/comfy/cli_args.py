"""ComfyUI's ``comfy.cli_args``: ``args`` (the command line ComfyUI was started with) as
latentgraph's Environment answers it. An option latentgraph has no counterpart for reads as
argparse's default for a flag that was not given (None or False)."""

from __future__ import annotations

import enum

from latentgraph.comfy_compat import runtime


class LatentPreviewMethod(enum.Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class PerformanceFeature(enum.Enum):
    Fp16Accumulation = "fp16_accumulation"
    Fp8MatrixMultiplication = "fp8_matrix_mult"
    CublasOps = "cublas_ops"


_FLAGS = {"cpu": lambda env: env.device == "cpu", "lowvram": lambda env: env.lowvram,
          "output_directory": lambda env: str(env.output_dir), "input_directory": lambda env: str(env.input_dir),
          "temp_directory": lambda env: str(env.temp_dir), "preview_method": lambda env: LatentPreviewMethod.Auto,
          "disable_metadata": lambda env: False, "listen": lambda env: "127.0.0.1", "port": lambda env: 8188,
          "preview_size": lambda env: 512, "verbose": lambda env: "INFO", "fast": lambda env: set(),
          "force_fp16": lambda env: env.dtype == "fp16", "force_fp32": lambda env: env.dtype == "fp32",
          "bf16_unet": lambda env: env.dtype == "bf16", "fp16_unet": lambda env: env.dtype == "fp16"}


class _Args:
    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        flag = _FLAGS.get(name)
        return flag(runtime.current_env()) if flag is not None else None


args = _Args()


def __getattr__(name: str):
    raise runtime.missing(__name__, name)

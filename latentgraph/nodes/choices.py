"""Combo choices of the built-in nodes that come from modules importing torch.

The node declarations read them from here so that building the registry (``latentgraph
nodes``, ``validate``, ``convert``) imports no torch. Each list is a copy of the keys of the
table that implements it; tests/test_cli_imports.py checks every one against its source, so
adding a sampler there without adding it here fails the tests, never the users.
"""

from __future__ import annotations

# sampling/samplers.py SAMPLER_NAMES (ComfyUI's KSampler order)
SAMPLER_NAMES = [
    "euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2", "dpm_2",
    "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral", "dpmpp_2s_ancestral_cfg_pp",
    "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm",
    "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde", "seeds_2",
    "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc", "uni_pc_bh2",
]
# sampling/schedulers.py SCHEDULER_NAMES
SCHEDULER_NAMES = ["simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal",
                   "linear_quadratic", "kl_optimal"]
# sampling/sigma_lists.py: the keys of AYS_NOISE_LEVELS and of SPACINGS
AYS_MODEL_TYPES = ["SD1", "SDXL", "SVD"]
SPACING_NAMES = ["linear", "cosine", "sine"]
# models/fp8.py: the keys of WEIGHT_DTYPES
WEIGHT_DTYPE_NAMES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
# models/lora_extract.py LORA_TYPES
LORA_TYPES = ("standard", "full_diff")
# models/split_files.py CLIP_TYPES and DUAL_CLIP_TYPES
CLIP_TYPES = ("stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
              "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image")
DUAL_CLIP_TYPES = ("sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image")

# (this module's name, the source module, the source's name, how the source's value becomes ours)
SOURCES = (
    ("SAMPLER_NAMES", "latentgraph.sampling.samplers", "SAMPLER_NAMES", list),
    ("SCHEDULER_NAMES", "latentgraph.sampling.schedulers", "SCHEDULER_NAMES", list),
    ("AYS_MODEL_TYPES", "latentgraph.sampling.sigma_lists", "AYS_NOISE_LEVELS", list),
    ("SPACING_NAMES", "latentgraph.sampling.sigma_lists", "SPACINGS", list),
    ("WEIGHT_DTYPE_NAMES", "latentgraph.models.fp8", "WEIGHT_DTYPES", list),
    ("LORA_TYPES", "latentgraph.models.lora_extract", "LORA_TYPES", tuple),
    ("CLIP_TYPES", "latentgraph.models.split_files", "CLIP_TYPES", tuple),
    ("DUAL_CLIP_TYPES", "latentgraph.models.split_files", "DUAL_CLIP_TYPES", tuple),
)

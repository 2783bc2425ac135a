"""What this machine offers (CUDA or not, bf16, how many GPUs), as the OmegaConf resolvers conf/ reads:
`trainer=auto` picks its accelerator, precision and checkpoint interval from them, the local launcher its
number of workers. Registered when `kinject` is imported, so every reader of a config can resolve it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def on_cuda(gpu_value: Any, cpu_value: Any) -> Any:
    import torch

    return gpu_value if torch.cuda.is_available() else cpu_value


def auto_precision() -> str:
    """bf16-mixed on GPUs that have bf16 (Ampere and later), 16-mixed on older ones, fp32 on the CPU."""
    import torch

    if not torch.cuda.is_available():
        return "32-true"
    return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"


def local_jobs() -> int:
    """Jobs a local multirun runs side by side: one per GPU here, else one (in process, one after another)."""
    import torch

    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


OmegaConf.register_new_resolver("kinject.on_cuda", on_cuda, replace=True)
OmegaConf.register_new_resolver("kinject.auto_precision", auto_precision, replace=True)
OmegaConf.register_new_resolver("kinject.local_jobs", local_jobs, replace=True)

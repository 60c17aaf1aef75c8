"""GPU speed settings that leave the importance ratio exact: channels_last, TF32 and `torch.compile` of the policy.

* `use_channels_last`: convolution weights in NHWC, the layout tensor cores read without transposes; the first
  convolution turns the input to it too (cuDNN follows the weight's layout). The sampler hands the UNet's output
  on contiguous (`StochasticSampler.predict_mean`), so the step arithmetic, the log-densities (whose pixel means
  round by memory order) and everything stored stay as before.
* `enable_tf32`: fp32 matmuls and convolutions on tensor cores (10-bit mantissa inputs, fp32 accumulation).
  Under bf16 autocast it only touches the ops autocast keeps in fp32.
* `compile_policy`: `torch.compile` of the trained UNet, static shapes (`dynamic=False`). Sampling and
  re-scoring call one and the same compiled graph (`TrainingGraph`): a separately compiled inference graph
  fuses and rounds differently from the forward half of the training graph, which would move the ratio off 1
  (a re-scoring that rounds differently drifts by ~1e-3 in bf16, ten times PPO's clip range: see the README).
  Unsupported set-ups get a logged notice and run eagerly.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from diffusers.models.unets.unet_2d import UNet2DOutput

logger = logging.getLogger(__name__)

BACKEND = "inductor"
"""What `--compile` compiles with. The tests swap in a cheaper backend where the inductor's C++ build would take
minutes on a small CPU; they keep one inductor test, so the production path is compiled there too."""


def use_channels_last(unet: torch.nn.Module) -> None:
    """Keep `unet`'s convolution weights in channels_last; its state_dict (checkpoints, saved pipelines) stays NCHW.

    Converted in place, so an optimizer built before or after holds the same parameters. No forward hooks: a
    compiled module with hooks compiles them as graphs of their own.
    """
    unet.to(memory_format=torch.channels_last)
    # safetensors refuses non-contiguous tensors: checkpoints and saved pipelines get the usual NCHW weights.
    unet.register_state_dict_post_hook(_contiguous_state)


def _contiguous_state(module: torch.nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key, value in state_dict.items():
        if key.startswith(prefix) and isinstance(value, torch.Tensor) and not value.is_contiguous():
            state_dict[key] = value.contiguous()


def enable_tf32() -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (process-wide: torch keeps these flags globally)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def compile_unsupported(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run here (None when it can): checked before compiling, never by failing."""
    try:
        import torch._dynamo
    except Exception as error:  # a broken or stripped torch build
        return f"torch._dynamo cannot be imported ({type(error).__name__}: {error})"
    if not hasattr(torch.compiler, "set_stance"):
        return f"torch {torch.__version__} is older than 2.6"
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python version or platform"
    if BACKEND != "inductor":
        return None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else "Triton, which the inductor needs on CUDA, is not installed"
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as error:
            return f"no C++ compiler for the inductor's CPU kernels ({type(error).__name__}: {error})"
        return None
    return f"the inductor is not used on {device.type} devices here"


def compile_policy(unet: torch.nn.Module, device: torch.device) -> bool:
    """Compile `unet` in place (static shapes); returns False, with a notice, where compiling is unsupported.

    In place (`nn.Module.compile`), so every wrapper around it (accelerate's autocast, DDP) calls the compiled
    graph, its state_dict keys stay those of an eager run, and a deep copy (the EMA or merged-LoRA copy that is
    saved) is a plain eager module.
    """
    reason = compile_unsupported(device)
    if reason is not None:
        logger.warning("--compile is a no-op here: %s. The run continues uncompiled (eager).", reason)
        return False
    active_dropout = [
        name for name, module in unet.named_modules() if isinstance(module, torch.nn.Dropout) and module.p
    ]
    if active_dropout:
        raise ValueError(
            f"--compile samples with the training graph (train mode), but the UNet has active dropout "
            f"({', '.join(active_dropout[:3])}...): its rollouts would be random beyond their noise."
        )
    unet.compile(backend=BACKEND, dynamic=False)
    return True


class TrainingGraph:
    """Calls a compiled policy exactly as training re-scores it, so a rollout's log-probabilities are bitwise
    those an unchanged model gives when re-scored: train mode (set by the caller) and gradients on, output
    detached when the caller has gradients off. The activations saved for a backward that never comes are
    freed with the output's graph, one forward chunk at a time."""

    def __init__(self, unet: Callable[..., UNet2DOutput]):
        self.unet = unet

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor) -> UNet2DOutput:
        grad = torch.is_grad_enabled()
        with torch.enable_grad():
            output = self.unet(sample, timestep).sample
        return UNet2DOutput(sample=output if grad else output.detach())

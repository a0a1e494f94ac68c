"""pdfast.kernels: fused Triton kernels for the inversion hot loop, each with its plain-torch reference beside it.

Public functions run the Triton kernel for CUDA tensors (or anywhere with PDFAST_FORCE_TRITON=1, used by the tests
under TRITON_INTERPRET=1) and the torch reference otherwise. Importing this package never imports triton: kernels
are jitted at their first launch. The functions shadow their same-named modules as attributes of this package:
reach a module with importlib.import_module("pdfast.kernels.ddpm_update").
"""
from ._dispatch import use_triton
from .ddpm_update import ddpm_update, ddpm_update_ref
from .lstsq import lstsq_scale, lstsq_scale_ref
from .shift_loss import shift_loss, shift_loss_ref

__all__ = ["ddpm_update", "ddpm_update_ref", "lstsq_scale", "lstsq_scale_ref", "shift_loss", "shift_loss_ref",
           "use_triton"]

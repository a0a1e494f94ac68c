"""pdfast.kernels: fused ops for the inversion hot loop (Triton kernels, an optional native C++/CUDA build, and the
plain-torch reference of each beside it).

Public functions pick a backend per op and device (select_backend, `backends(device)` reports it): Triton for CUDA
tensors (or anywhere with PDFAST_FORCE_TRITON=1, used by the tests under TRITON_INTERPRET=1), the native library for
CPU tensors when it is built (`python -m pdfast.kernels.native_build`, docs/native.md), the torch reference
otherwise; PDFAST_KERNELS=torch|native|triton forces one. Importing this package never imports triton nor loads the
native library: kernels are jitted at their first launch, the library is loaded at the first CPU dispatch. The
functions shadow their same-named modules as attributes of this package: reach a module with
importlib.import_module("pdfast.kernels.ddpm_update"). `ddpm_update_row` and `shift_loss_row` are the same ops with
their coefficients in a device tensor (no host sync, for CUDA graphs): Triton or the torch reference.
"""
from . import native
from ._dispatch import KernelSettingError, NativeUnavailableError, backends, select_backend, use_triton
from .ddpm_update import ddpm_update, ddpm_update_ref, ddpm_update_row
from .lstsq import lstsq_scale, lstsq_scale_ref
from .shift_loss import shift_loss, shift_loss_ref, shift_loss_row

__all__ = ["KernelSettingError", "NativeUnavailableError", "backends", "ddpm_update", "ddpm_update_ref",
           "ddpm_update_row", "lstsq_scale", "lstsq_scale_ref", "native", "select_backend", "shift_loss", "shift_loss_ref",
           "shift_loss_row", "use_triton"]

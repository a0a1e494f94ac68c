// pdfast native ops: declarations shared by the schema/autograd file (ops.cpp), the CPU kernels (ops_cpu.cpp) and the
// CUDA kernels (ops_cuda.cu). The formulas are those of the torch references in kernels/*.py, in the same order of
// operations where it matters for rounding:
//
//   ddpm_update    out = c1 (x - c2 eps) + sigma noise
//   shift_loss     d = mean_b eps_b - lam delta;  L = mean |d|  or  mean d^2
//   lstsq_scale    m = mean_b eps_b;  lam = <m, delta> / <delta, delta>
//
// Every op computes in the compute dtype: the promotion of its inputs' dtypes and fp32 (fp64 stays fp64, bf16 and
// fp16 are upcast to fp32), as the references do.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>
#include <cstdint>
#include <optional>
#include <tuple>

namespace pdfast {

// ---------------------------------------------------------------- shared checks, dtype rules, allocation (ops.cpp)
//
// The device backends (and the Meta kernels) share everything above the arithmetic: the checks, the dtypes and the
// outputs' allocation, so the backends differ only in how they fill their outputs.

// Result dtype of the update: the promotion of the dtypes of all given tensors (all must be floating point).
at::ScalarType result_type(const char* op, std::initializer_list<const at::Tensor*> tensors);
// The compute dtype for a result dtype: promote(result, fp32).
at::ScalarType compute_type(at::ScalarType result);

// Whether an optional tensor argument (noise) was given.
inline bool present(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// Contiguous tensor of dtype `dtype` (a no-op when it already is).
inline at::Tensor prepared(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

// t's data as T*, or nullptr for an undefined tensor (an output the caller did not ask for, an absent input).
template <typename T>
T* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}
template <typename T>
const T* const_data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

// ddpm_update's shape/device checks (one-line messages: TORCH_CHECK -> RuntimeError in Python); returns the result
// dtype.
at::ScalarType check_ddpm_update(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& noise);

// ddpm_update's inputs checked and made contiguous in the compute dtype (noise undefined when absent), and its output
// allocated in the compute dtype; a backend fills `out` and returns result().
struct UpdateInputs {
  at::Tensor x, eps, noise, out;
  at::ScalarType result_dtype;
  at::Tensor result() const { return out.scalar_type() == result_dtype ? out : out.to(result_dtype); }
};
UpdateInputs prepare_ddpm_update(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& noise);

// ddpm_update's backward outputs {gx, geps, gnoise} allocated with grad's shape in its compute dtype (undefined where
// mask is false), and `grad` made contiguous in that dtype, left undefined when there is nothing to compute (an empty
// batch, or no output asked for); a backend fills the outputs when grad is defined and returns outputs().
struct UpdateGrads {
  at::Tensor grad, gx, geps, gnoise;
  std::tuple<at::Tensor, at::Tensor, at::Tensor> outputs() const { return {gx, geps, gnoise}; }
};
UpdateGrads prepare_ddpm_update_backward(const at::Tensor& grad, std::array<bool, 3> mask);

// The batch ops (shift_loss, lstsq_scale): checks, then their per-image forward output (d = m - lam delta, or the
// batch mean m), eps_hat.shape[1:] in the compute dtype.
at::Tensor batch_op_output(const char* op, const at::Tensor& eps_hat, const at::Tensor& delta);

// Checks of the batch ops' backward arguments.
void check_shift_loss_backward(const at::Tensor& grad, int64_t n_batch);
void check_lstsq_scale_backward(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& delta,
                                const at::Tensor& lam, int64_t n_batch);

// The batch ops' backward outputs {geps (n_batch, *saved.shape), gdelta (saved.shape)} with the saved per-image
// tensor's (d's or m's) dtype and device, undefined where mask is false.
std::array<at::Tensor, 2> batch_op_grads(const at::Tensor& saved, int64_t n_batch, std::array<bool, 2> mask);

// ---------------------------------------------------------------- device kernels (ops_cpu.cpp, ops_cuda.cu)
//
// Each backend implements these with the same contract; the dispatcher picks the backend by device. A backend's
// file names them <op>_<suffix> (ddpm_update_cpu, ...) and registers them with PDFAST_REGISTER_KERNELS.
//
// ddpm_update(x, eps, c1, c2, sigma, noise?) -> out (result dtype, x's shape)
// ddpm_update_backward(grad, c1, c2, sigma, mask[x, eps, noise])
//     -> (gx, geps, gnoise) with grad's shape in its compute dtype; undefined where mask is false.
// shift_loss_forward(eps_hat, delta, lam, l2) -> (loss 0-dim, d with eps_hat.shape[1:]) in the compute dtype
// shift_loss_backward(grad 0-dim, d, n_batch, lam, l2, mask[eps_hat, delta])
//     -> (geps (n_batch, *d.shape), gdelta d.shape) in d's dtype; undefined where mask is false.
// lstsq_scale_forward(eps_hat, delta) -> (lam 0-dim, m with eps_hat.shape[1:]) in the compute dtype
// lstsq_scale_backward(grad 0-dim, m, delta, lam, n_batch, mask[eps_hat, delta])
//     -> (geps (n_batch, *m.shape), gdelta m.shape) in m's dtype; undefined where mask is false.

}  // namespace pdfast

// Registers a backend's six kernels, pdfast::<op>_SUFFIX, for dispatch key KEY (CPU, CUDA, Meta).
#define PDFAST_REGISTER_KERNELS(KEY, SUFFIX)                                     \
  TORCH_LIBRARY_IMPL(pdfast, KEY, m) {                                           \
    m.impl("ddpm_update", &pdfast::ddpm_update_##SUFFIX);                        \
    m.impl("ddpm_update_backward", &pdfast::ddpm_update_backward_##SUFFIX);      \
    m.impl("shift_loss_forward", &pdfast::shift_loss_forward_##SUFFIX);          \
    m.impl("shift_loss_backward", &pdfast::shift_loss_backward_##SUFFIX);        \
    m.impl("lstsq_scale_forward", &pdfast::lstsq_scale_forward_##SUFFIX);        \
    m.impl("lstsq_scale_backward", &pdfast::lstsq_scale_backward_##SUFFIX);      \
  }

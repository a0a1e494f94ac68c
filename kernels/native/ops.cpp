// pdfast native ops: schemas (TORCH_LIBRARY(pdfast)), shared checks, autograd and shape-only (Meta) kernels.
//
// Public ops (torch.ops.pdfast.*), differentiable through the Autograd kernels registered here:
//   ddpm_update(x, eps, c1, c2, sigma, noise=None) -> Tensor
//   shift_loss(eps_hat, delta, lam, l2=False) -> Tensor
//   lstsq_scale(eps_hat, delta) -> Tensor
// Their device kernels (CPU in ops_cpu.cpp, CUDA in ops_cuda.cu) and the forward/backward ops the autograd
// functions call:
//   ddpm_update_backward, shift_loss_forward, shift_loss_backward, lstsq_scale_forward, lstsq_scale_backward
// The backward ops are not differentiable themselves (no double backward).
#include "ops.h"

#include <torch/autograd.h>
#include <torch/library.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>
#include <vector>

namespace pdfast {

// ---------------------------------------------------------------- checks and dtype rules

at::ScalarType result_type(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  std::optional<at::ScalarType> out;
  for (const at::Tensor* t : tensors) {
    if (t == nullptr || !t->defined()) {
      continue;
    }
    TORCH_CHECK(at::isFloatingType(t->scalar_type()), "pdfast::", op,
                ": tensors must be floating point, got ", t->scalar_type());
    out = out ? at::promote_types(*out, t->scalar_type()) : t->scalar_type();
  }
  TORCH_CHECK(out.has_value(), "pdfast::", op, ": no tensor input");
  return *out;
}

at::ScalarType compute_type(at::ScalarType result) { return at::promote_types(result, at::kFloat); }

namespace {

bool is_delta_shape(const at::Tensor& delta, const at::Tensor& batch) {
  const auto per = batch.sizes().slice(1);
  if (delta.sizes() == per) {
    return true;
  }
  return delta.dim() == batch.dim() && delta.size(0) == 1 && delta.sizes().slice(1) == per;
}

void check_same_device(const char* op, const at::Tensor& ref, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == ref.device(), "pdfast::", op, ": ", name, " is on ", t.device(),
              " but the batch is on ", ref.device());
}

}  // namespace

at::ScalarType check_ddpm_update(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& noise) {
  TORCH_CHECK(x.dim() >= 1 && eps.sizes() == x.sizes(),
              "pdfast::ddpm_update: eps must have the shape of x (B, ...), got ", eps.sizes(), " and ", x.sizes());
  check_same_device("ddpm_update", x, eps, "eps");
  const bool has_noise = present(noise);
  if (has_noise) {
    TORCH_CHECK(noise->sizes() == x.sizes(), "pdfast::ddpm_update: noise must have the shape of x ", x.sizes(),
                ", got ", noise->sizes());
    check_same_device("ddpm_update", x, *noise, "noise");
  }
  return result_type("ddpm_update", {&x, &eps, has_noise ? &*noise : nullptr});
}

UpdateInputs prepare_ddpm_update(const at::Tensor& x, const at::Tensor& eps, const std::optional<at::Tensor>& noise) {
  const auto rt = check_ddpm_update(x, eps, noise);
  const auto ct = compute_type(rt);
  return {prepared(x, ct), prepared(eps, ct), present(noise) ? prepared(*noise, ct) : at::Tensor(),
          at::empty(x.sizes(), x.options().dtype(ct)), rt};
}

UpdateGrads prepare_ddpm_update_backward(const at::Tensor& grad, std::array<bool, 3> mask) {
  TORCH_CHECK(grad.dim() >= 1, "pdfast::ddpm_update_backward: grad must be (B, ...), got ", grad.sizes());
  const auto ct = compute_type(grad.scalar_type());
  auto full = [&](bool on) { return on ? at::empty(grad.sizes(), grad.options().dtype(ct)) : at::Tensor(); };
  const bool work = grad.numel() > 0 && (mask[0] || mask[1] || mask[2]);
  return {work ? prepared(grad, ct) : at::Tensor(), full(mask[0]), full(mask[1]), full(mask[2])};
}

at::Tensor batch_op_output(const char* op, const at::Tensor& eps_hat, const at::Tensor& delta) {
  TORCH_CHECK(eps_hat.dim() >= 1 && eps_hat.size(0) >= 1 && is_delta_shape(delta, eps_hat), "pdfast::", op,
              ": eps_hat must be (B, C, H, W) with B >= 1 and delta (1, C, H, W) or (C, H, W), got ",
              eps_hat.sizes(), " and ", delta.sizes());
  check_same_device(op, eps_hat, delta, "delta");
  const auto ct = compute_type(result_type(op, {&eps_hat, &delta}));
  return at::empty(eps_hat.sizes().slice(1), eps_hat.options().dtype(ct));
}

// The backward checks and output shapes read sizes as SymInts: under torch.compile with dynamic shapes the Meta
// kernels see symbolic sizes, where numel() and sizes() throw (torch 2.14's opcheck tests that); on real tensors a
// SymInt is a plain integer.
void check_shift_loss_backward(const at::Tensor& grad, int64_t n_batch) {
  TORCH_CHECK(grad.sym_numel() == 1 && n_batch >= 1,
              "pdfast::shift_loss_backward: grad must be a scalar and n_batch >= 1");
}

void check_lstsq_scale_backward(const at::Tensor& grad, const at::Tensor& m, const at::Tensor& delta,
                                const at::Tensor& lam, int64_t n_batch) {
  TORCH_CHECK(grad.sym_numel() == 1 && lam.sym_numel() == 1 && n_batch >= 1 && delta.sym_numel() == m.sym_numel(),
              "pdfast::lstsq_scale_backward: grad and lam must be scalars, n_batch >= 1, delta the size of m");
}

std::array<at::Tensor, 2> batch_op_grads(const at::Tensor& saved, int64_t n_batch, std::array<bool, 2> mask) {
  std::vector<c10::SymInt> eps_shape{c10::SymInt(n_batch)};
  eps_shape.insert(eps_shape.end(), saved.sym_sizes().begin(), saved.sym_sizes().end());
  const auto opts = saved.options();
  return {mask[0] ? at::empty_symint(eps_shape, opts) : at::Tensor(),
          mask[1] ? at::empty_symint(saved.sym_sizes(), opts) : at::Tensor()};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using Tensor = at::Tensor;
using OptTensor = std::optional<at::Tensor>;

// ---------------------------------------------------------------- typed handles to the ops (dispatcher calls)

Tensor call_ddpm_update(const Tensor& x, const Tensor& eps, double c1, double c2, double sigma,
                        const OptTensor& noise) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::ddpm_update", "")
                       .typed<Tensor(const Tensor&, const Tensor&, double, double, double, const OptTensor&)>();
  return op.call(x, eps, c1, c2, sigma, noise);
}

std::tuple<Tensor, Tensor, Tensor> call_ddpm_update_backward(const Tensor& grad, double c1, double c2, double sigma,
                                                             std::array<bool, 3> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::ddpm_update_backward", "")
                       .typed<std::tuple<Tensor, Tensor, Tensor>(const Tensor&, double, double, double,
                                                                 std::array<bool, 3>)>();
  return op.call(grad, c1, c2, sigma, mask);
}

std::tuple<Tensor, Tensor> call_shift_loss_forward(const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::shift_loss_forward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, double, bool)>();
  return op.call(eps_hat, delta, lam, l2);
}

std::tuple<Tensor, Tensor> call_shift_loss_backward(const Tensor& grad, const Tensor& d, int64_t n_batch, double lam,
                                                    bool l2, std::array<bool, 2> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::shift_loss_backward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, int64_t, double, bool,
                                                         std::array<bool, 2>)>();
  return op.call(grad, d, n_batch, lam, l2, mask);
}

std::tuple<Tensor, Tensor> call_lstsq_scale_forward(const Tensor& eps_hat, const Tensor& delta) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::lstsq_scale_forward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&)>();
  return op.call(eps_hat, delta);
}

std::tuple<Tensor, Tensor> call_lstsq_scale_backward(const Tensor& grad, const Tensor& m, const Tensor& delta,
                                                     const Tensor& lam, int64_t n_batch, std::array<bool, 2> mask) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("pdfast::lstsq_scale_backward", "")
                       .typed<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                                         int64_t, std::array<bool, 2>)>();
  return op.call(grad, m, delta, lam, n_batch, mask);
}

// A gradient in its input's dtype and shape (both no-ops in the common case).
Tensor as_input(const Tensor& grad, at::ScalarType dtype, c10::IntArrayRef shape) {
  if (!grad.defined()) {
    return grad;
  }
  Tensor out = grad.scalar_type() == dtype ? grad : grad.to(dtype);
  return out.sizes() == shape ? out : out.reshape(shape);
}

bool any_requires_grad(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t != nullptr && t->defined() && t->requires_grad()) {
      return true;
    }
  }
  return false;
}

// ---------------------------------------------------------------- autograd functions

// The batch ops' inputs' dtypes and shapes, saved by forward so that backward returns gradients shaped like them.
void save_batch_inputs(AutogradContext* ctx, const Tensor& eps_hat, const Tensor& delta) {
  auto& s = ctx->saved_data;
  s["eps_dtype"] = eps_hat.scalar_type();
  s["eps_shape"] = eps_hat.sizes().vec();
  s["delta_dtype"] = delta.scalar_type();
  s["delta_shape"] = delta.sizes().vec();
}

int64_t saved_batch_size(AutogradContext* ctx) { return ctx->saved_data["eps_shape"].toIntVector()[0]; }

std::array<bool, 2> batch_input_mask(AutogradContext* ctx) {
  return {ctx->needs_input_grad(0), ctx->needs_input_grad(1)};
}

// The gradients of (eps_hat, delta) as the inputs were, then an undefined one per non-tensor argument.
variable_list batch_input_grads(AutogradContext* ctx, const std::tuple<Tensor, Tensor>& grads, size_t n_scalars) {
  auto& s = ctx->saved_data;
  variable_list out{as_input(std::get<0>(grads), s["eps_dtype"].toScalarType(), s["eps_shape"].toIntVector()),
                    as_input(std::get<1>(grads), s["delta_dtype"].toScalarType(), s["delta_shape"].toIntVector())};
  out.resize(2 + n_scalars);
  return out;
}

}  // namespace

// Named outside the anonymous namespace: grad_fn.name() shows "torch::autograd::CppNode<pdfast::DDPMUpdate>".
struct DDPMUpdate : public torch::autograd::Function<DDPMUpdate> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& eps, double c1, double c2, double sigma,
                        const OptTensor& noise) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto& s = ctx->saved_data;
    s["c1"] = c1;
    s["c2"] = c2;
    s["sigma"] = sigma;
    s["x_dtype"] = x.scalar_type();
    s["eps_dtype"] = eps.scalar_type();
    s["has_noise"] = present(noise);
    if (present(noise)) {
      s["noise_dtype"] = noise->scalar_type();
    }
    s["shape"] = x.sizes().vec();
    return call_ddpm_update(x, eps, c1, c2, sigma, noise);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& s = ctx->saved_data;
    const bool has_noise = s["has_noise"].toBool();
    // needs_input_grad counts only the tensor inputs that were given: x, eps, [noise].
    const std::array<bool, 3> mask = {ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                      has_noise && ctx->needs_input_grad(2)};
    auto [gx, geps, gnoise] =
        call_ddpm_update_backward(grads[0], s["c1"].toDouble(), s["c2"].toDouble(), s["sigma"].toDouble(), mask);
    const auto shape = s["shape"].toIntVector();
    gx = as_input(gx, s["x_dtype"].toScalarType(), shape);
    geps = as_input(geps, s["eps_dtype"].toScalarType(), shape);
    if (has_noise) {
      gnoise = as_input(gnoise, s["noise_dtype"].toScalarType(), shape);
    }
    return {gx, geps, Tensor(), Tensor(), Tensor(), has_noise ? gnoise : Tensor()};
  }
};

struct ShiftLoss : public torch::autograd::Function<ShiftLoss> {
  static Tensor forward(AutogradContext* ctx, const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, d] = call_shift_loss_forward(eps_hat, delta, lam, l2);
    ctx->save_for_backward({d});
    ctx->saved_data["lam"] = lam;
    ctx->saved_data["l2"] = l2;
    save_batch_inputs(ctx, eps_hat, delta);
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto& s = ctx->saved_data;
    return batch_input_grads(ctx,
                             call_shift_loss_backward(grads[0], ctx->get_saved_variables()[0], saved_batch_size(ctx),
                                                      s["lam"].toDouble(), s["l2"].toBool(), batch_input_mask(ctx)),
                             2);
  }
};

struct LstsqScale : public torch::autograd::Function<LstsqScale> {
  static Tensor forward(AutogradContext* ctx, const Tensor& eps_hat, const Tensor& delta) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [lam, m] = call_lstsq_scale_forward(eps_hat, delta);
    ctx->save_for_backward({m, delta, lam});
    save_batch_inputs(ctx, eps_hat, delta);
    return lam;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    return batch_input_grads(ctx,
                             call_lstsq_scale_backward(grads[0], saved[0], saved[1], saved[2], saved_batch_size(ctx),
                                                       batch_input_mask(ctx)),
                             0);
  }
};

namespace {

// Autograd kernels: without grad mode or inputs that need a gradient they skip the Function machinery.

Tensor ddpm_update_autograd(const Tensor& x, const Tensor& eps, double c1, double c2, double sigma,
                            const OptTensor& noise) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&x, &eps, present(noise) ? &*noise : nullptr})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_ddpm_update(x, eps, c1, c2, sigma, noise);
  }
  return DDPMUpdate::apply(x, eps, c1, c2, sigma, noise);
}

Tensor shift_loss_autograd(const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&eps_hat, &delta})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_shift_loss_forward(eps_hat, delta, lam, l2));
  }
  return ShiftLoss::apply(eps_hat, delta, lam, l2);
}

Tensor lstsq_scale_autograd(const Tensor& eps_hat, const Tensor& delta) {
  if (!at::GradMode::is_enabled() || !any_requires_grad({&eps_hat, &delta})) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return std::get<0>(call_lstsq_scale_forward(eps_hat, delta));
  }
  return LstsqScale::apply(eps_hat, delta);
}

// Backend-independent kernels of the public loss ops: the forward op, loss only (it dispatches by device).

Tensor shift_loss_composite(const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
  return std::get<0>(call_shift_loss_forward(eps_hat, delta, lam, l2));
}

Tensor lstsq_scale_composite(const Tensor& eps_hat, const Tensor& delta) {
  return std::get<0>(call_lstsq_scale_forward(eps_hat, delta));
}

// ---------------------------------------------------------------- Meta kernels (shapes and dtypes only)
// They let torch.compile / FakeTensor trace through the ops (torch.library.opcheck tests them).

Tensor ddpm_update_meta(const Tensor& x, const Tensor& eps, double, double, double, const OptTensor& noise) {
  return at::empty(x.sizes(), x.options().dtype(check_ddpm_update(x, eps, noise)));
}

std::tuple<Tensor, Tensor, Tensor> ddpm_update_backward_meta(const Tensor& grad, double, double, double,
                                                             std::array<bool, 3> mask) {
  return prepare_ddpm_update_backward(grad, mask).outputs();
}

// The batch ops' forward: the scalar and the per-image output (the backward's saved tensor).
std::tuple<Tensor, Tensor> batch_forward_meta(const char* op, const Tensor& eps_hat, const Tensor& delta) {
  Tensor out = batch_op_output(op, eps_hat, delta);
  return {at::empty({}, out.options()), out};
}

std::tuple<Tensor, Tensor> shift_loss_forward_meta(const Tensor& eps_hat, const Tensor& delta, double, bool) {
  return batch_forward_meta("shift_loss", eps_hat, delta);
}

std::tuple<Tensor, Tensor> shift_loss_backward_meta(const Tensor& grad, const Tensor& d, int64_t n_batch, double,
                                                    bool, std::array<bool, 2> mask) {
  check_shift_loss_backward(grad, n_batch);
  const auto g = batch_op_grads(d, n_batch, mask);
  return {g[0], g[1]};
}

std::tuple<Tensor, Tensor> lstsq_scale_forward_meta(const Tensor& eps_hat, const Tensor& delta) {
  return batch_forward_meta("lstsq_scale", eps_hat, delta);
}

std::tuple<Tensor, Tensor> lstsq_scale_backward_meta(const Tensor& grad, const Tensor& m, const Tensor& delta,
                                                     const Tensor& lam, int64_t n_batch, std::array<bool, 2> mask) {
  check_lstsq_scale_backward(grad, m, delta, lam, n_batch);
  const auto g = batch_op_grads(m, n_batch, mask);
  return {g[0], g[1]};
}

}  // namespace
}  // namespace pdfast

TORCH_LIBRARY(pdfast, m) {
  m.def("ddpm_update(Tensor x, Tensor eps, float c1, float c2, float sigma, Tensor? noise=None) -> Tensor");
  m.def("ddpm_update_backward(Tensor grad, float c1, float c2, float sigma, bool[3] output_mask) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("shift_loss(Tensor eps_hat, Tensor delta, float lam, bool l2=False) -> Tensor");
  m.def("shift_loss_forward(Tensor eps_hat, Tensor delta, float lam, bool l2=False) -> (Tensor, Tensor)");
  m.def("shift_loss_backward(Tensor grad, Tensor d, int n_batch, float lam, bool l2, bool[2] output_mask) "
        "-> (Tensor, Tensor)");
  m.def("lstsq_scale(Tensor eps_hat, Tensor delta) -> Tensor");
  m.def("lstsq_scale_forward(Tensor eps_hat, Tensor delta) -> (Tensor, Tensor)");
  m.def("lstsq_scale_backward(Tensor grad, Tensor m, Tensor delta, Tensor lam, int n_batch, bool[2] output_mask) "
        "-> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(pdfast, Autograd, m) {
  m.impl("ddpm_update", &pdfast::ddpm_update_autograd);
  m.impl("shift_loss", &pdfast::shift_loss_autograd);
  m.impl("lstsq_scale", &pdfast::lstsq_scale_autograd);
}

TORCH_LIBRARY_IMPL(pdfast, CompositeExplicitAutograd, m) {
  m.impl("shift_loss", &pdfast::shift_loss_composite);
  m.impl("lstsq_scale", &pdfast::lstsq_scale_composite);
}

PDFAST_REGISTER_KERNELS(Meta, meta)

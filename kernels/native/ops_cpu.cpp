// pdfast native ops, CPU backend: the at::Tensor side (with the checks, dtypes and allocation ops.h shares with the
// other backends) and the threading, with at::parallel_for / at::parallel_reduce (OpenMP in torch's CPU builds). The
// arithmetic is in cpu_kernels.cpp, built once per CPU capability (at::vec for DEFAULT, AVX2, AVX512), and for the
// batch ops' backward in formulas.h; this file, built for the baseline ISA, calls the table matching torch's own
// capability choice.
//
// ddpm_update runs one pass over flat memory each way. The batch reductions (the mean over the batch of eps_hat in
// shift_loss and lstsq_scale) split the per-image positions into tasks; a task walks its positions in tiles of
// kTile, reducing each tile over the batch in registers and finishing it (shift, norm, dot products) while it is
// still in L1.
#include "cpu_kernels.h"
#include "formulas.h"
#include "ops.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

namespace pdfast {
namespace {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

constexpr int64_t kGrain = 32768;  // elements per parallel task (at::internal::GRAIN_SIZE)
constexpr int64_t kTile = 1024;    // positions per batch-reduction tile: 4 KiB of fp32

// Positions per task for the batch reductions: at least kTile, and about kGrain elements of work.
int64_t batch_grain(int64_t n_batch) { return std::max<int64_t>(kTile, kGrain / std::max<int64_t>(n_batch, 1)); }

// ---------------------------------------------------------------- the kernel table for this CPU

enum class Isa { DEFAULT, AVX2, AVX512 };

bool cpu_supports(Isa isa) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
  switch (isa) {
    case Isa::AVX512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("fma");
    case Isa::AVX2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    default:
      return true;
  }
#else
  return isa == Isa::DEFAULT;
#endif
}

// torch's choice (at::get_cpu_capability(): "AVX512", "AVX2", "DEFAULT"/"NO AVX", ATEN_CPU_CAPABILITY lowers it),
// capped by what this build has and what the CPU reports.
Isa selected_isa() {
  static const Isa isa = [] {
    const std::string torch_choice = at::get_cpu_capability();
#ifdef PDFAST_CPU_AVX512
    if (torch_choice == "AVX512" && cpu_supports(Isa::AVX512)) {
      return Isa::AVX512;
    }
#endif
#ifdef PDFAST_CPU_AVX2
    if ((torch_choice == "AVX512" || torch_choice == "AVX2") && cpu_supports(Isa::AVX2)) {
      return Isa::AVX2;
    }
#endif
    return Isa::DEFAULT;
  }();
  return isa;
}

template <typename T>
const cpu::Kernels<T>& kernels() {
  static const cpu::Kernels<T>* table = [] {
    constexpr bool f32 = std::is_same_v<T, float>;
    auto pick = [](const cpu::Kernels<float>& a, const cpu::Kernels<double>& b) {
      if constexpr (f32) {
        return &a;
      } else {
        return &b;
      }
    };
    switch (selected_isa()) {
#ifdef PDFAST_CPU_AVX512
      case Isa::AVX512:
        return pick(cpu::AVX512::table_f32(), cpu::AVX512::table_f64());
#endif
#ifdef PDFAST_CPU_AVX2
      case Isa::AVX2:
        return pick(cpu::AVX2::table_f32(), cpu::AVX2::table_f64());
#endif
      default:
        return pick(cpu::DEFAULT::table_f32(), cpu::DEFAULT::table_f64());
    }
  }();
  return *table;
}

std::string cpu_capability() {
  switch (selected_isa()) {
#ifdef PDFAST_CPU_AVX512
    case Isa::AVX512:
      return cpu::AVX512::name();
#endif
#ifdef PDFAST_CPU_AVX2
    case Isa::AVX2:
      return cpu::AVX2::name();
#endif
    default:
      return cpu::DEFAULT::name();
  }
}

// ---------------------------------------------------------------- ddpm_update

Tensor ddpm_update_cpu(const Tensor& x, const Tensor& eps, double c1, double c2, double sigma,
                       const OptTensor& noise) {
  const UpdateInputs in = prepare_ddpm_update(x, eps, noise);
  const int64_t total = x.numel();
  if (total > 0) {
    AT_DISPATCH_FLOATING_TYPES(in.out.scalar_type(), "pdfast::ddpm_update (CPU)", [&] {
      using T = scalar_t;
      const auto& k = kernels<T>();
      const T* xp = in.x.const_data_ptr<T>();
      const T* ep = in.eps.const_data_ptr<T>();
      const T* np = const_data_or_null<T>(in.noise);
      T* op = in.out.data_ptr<T>();
      const T tc1 = static_cast<T>(c1), tc2 = static_cast<T>(c2), tsigma = static_cast<T>(sigma);
      at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
        k.ddpm_update_row(xp + begin, ep + begin, np != nullptr ? np + begin : nullptr, op + begin, end - begin, tc1,
                          tc2, tsigma);
      });
    });
  }
  return in.result();
}

std::tuple<Tensor, Tensor, Tensor> ddpm_update_backward_cpu(const Tensor& grad, double c1, double c2, double sigma,
                                                            std::array<bool, 3> mask) {
  const UpdateGrads out = prepare_ddpm_update_backward(grad, mask);
  if (out.grad.defined()) {
    AT_DISPATCH_FLOATING_TYPES(out.grad.scalar_type(), "pdfast::ddpm_update_backward (CPU)", [&] {
      using T = scalar_t;
      const auto& k = kernels<T>();
      const T* gp = out.grad.const_data_ptr<T>();
      T* gxp = data_or_null<T>(out.gx);
      T* gep = data_or_null<T>(out.geps);
      T* gnp = data_or_null<T>(out.gnoise);
      const T tc1 = static_cast<T>(c1), tc2 = static_cast<T>(c2), tsigma = static_cast<T>(sigma);
      auto at_off = [](T* p, int64_t off) { return p != nullptr ? p + off : nullptr; };
      at::parallel_for(0, out.grad.numel(), kGrain, [&](int64_t begin, int64_t end) {
        k.ddpm_backward_row(gp + begin, at_off(gxp, begin), at_off(gep, begin), at_off(gnp, begin), end - begin, tc1,
                            tc2, tsigma);
      });
    });
  }
  return out.outputs();
}

// ---------------------------------------------------------------- the batch ops: shift_loss, lstsq_scale

using Sums = std::array<double, 2>;

// The batch ops' forward. `out` (batch_op_output's d or m) receives the batch sum of eps_hat tile by tile, and each
// tile is finished while it is still in L1: finish(kernels, out + c, delta + c, len, n_batch as T, sums) turns the
// tile's sums into d or m in place and adds the tile's share to the two running sums, which are returned.
template <typename Finish>
Sums batch_forward(const Tensor& eps_hat, const Tensor& delta, const Tensor& out, Finish finish) {
  const auto ct = out.scalar_type();
  const Tensor ec = prepared(eps_hat, ct), dc = prepared(delta, ct);
  const int64_t n_batch = eps_hat.size(0), n = out.numel();
  Sums sums{0.0, 0.0};
  AT_DISPATCH_FLOATING_TYPES(ct, "pdfast batch op forward (CPU)", [&] {
    using T = scalar_t;
    const auto& k = kernels<T>();
    const T* ep = ec.const_data_ptr<T>();
    const T* deltap = dc.const_data_ptr<T>();
    T* op = out.data_ptr<T>();
    sums = at::parallel_reduce(
        0, n, batch_grain(n_batch), Sums{0.0, 0.0},
        [&](int64_t p0, int64_t p1, Sums acc) {
          for (int64_t c = p0; c < p1; c += kTile) {
            const int64_t len = std::min(kTile, p1 - c);
            k.batch_sum(ep + c, n, n_batch, len, op + c);
            finish(k, op + c, deltap + c, len, static_cast<T>(n_batch), acc);
          }
          return acc;
        },
        [](const Sums& a, const Sums& b) { return Sums{a[0] + b[0], a[1] + b[1]}; });
  });
  return sums;
}

// The batch ops' backward, whose eps_hat gradient is the same for every image. Allocates {geps, gdelta} like the
// saved per-image tensor (d or m, contiguous); unless there is nothing to write, calls make_grad_at(T{}, gdelta as
// T* or null) once, in saved's dtype T, for a function grad_at(j) that writes the delta gradient at position j (when
// wanted) and returns the eps_hat gradient there. Tasks own ranges of positions; per tile, the grad_at values are
// copied into every image's row of geps.
template <typename MakeGradAt>
std::tuple<Tensor, Tensor> batch_backward(const Tensor& saved, int64_t n_batch, std::array<bool, 2> mask,
                                          MakeGradAt make_grad_at) {
  auto [geps, gdelta] = batch_op_grads(saved, n_batch, mask);
  const int64_t n = saved.numel();
  if (n == 0 || !(mask[0] || mask[1])) {
    return {geps, gdelta};
  }
  AT_DISPATCH_FLOATING_TYPES(saved.scalar_type(), "pdfast batch op backward (CPU)", [&] {
    using T = scalar_t;
    const auto grad_at = make_grad_at(T{}, data_or_null<T>(gdelta));
    T* gep = data_or_null<T>(geps);
    at::parallel_for(0, n, batch_grain(n_batch), [&](int64_t p0, int64_t p1) {
      alignas(64) T ge[kTile];
      for (int64_t c = p0; c < p1; c += kTile) {
        const int64_t len = std::min(kTile, p1 - c);
        for (int64_t k = 0; k < len; ++k) {
          ge[k] = grad_at(c + k);
        }
        if (gep != nullptr) {
          for (int64_t b = 0; b < n_batch; ++b) {
            std::memcpy(gep + b * n + c, ge, len * sizeof(T));
          }
        }
      }
    });
  });
  return {geps, gdelta};
}

std::tuple<Tensor, Tensor> shift_loss_forward_cpu(const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
  Tensor d = batch_op_output("shift_loss", eps_hat, delta);
  const Sums sums = batch_forward(eps_hat, delta, d, [&](const auto& k, auto* dp, const auto* deltap, int64_t len,
                                                         auto n_batch, Sums& acc) {
    acc[0] += k.shift_loss_tile(dp, deltap, len, n_batch, static_cast<decltype(n_batch)>(lam), l2);
  });
  const int64_t n = d.numel();
  return {at::scalar_tensor(n > 0 ? sums[0] / static_cast<double>(n) : NAN, d.options()), d};
}

std::tuple<Tensor, Tensor> shift_loss_backward_cpu(const Tensor& grad, const Tensor& d, int64_t n_batch, double lam,
                                                   bool l2, std::array<bool, 2> mask) {
  check_shift_loss_backward(grad, n_batch);
  const Tensor dc = d.contiguous();
  return batch_backward(dc, n_batch, mask, [&](auto zero, auto* gdp) {
    using T = decltype(zero);
    // The reference's chain: mean backward g / N, then |d| or d^2 (shift_loss_grad), then d = m - lam delta ->
    // (gm, -gd lam), then the batch mean -> gm / B for every image.
    const T gn = static_cast<T>(grad.item<double>()) / static_cast<T>(dc.numel());
    const T tlam = static_cast<T>(lam), tb = static_cast<T>(n_batch);
    const T* dp = dc.const_data_ptr<T>();
    return [=](int64_t j) {
      const T gd = shift_loss_grad(gn, dp[j], l2);
      if (gdp != nullptr) {
        gdp[j] = -gd * tlam;
      }
      return gd / tb;
    };
  });
}

std::tuple<Tensor, Tensor> lstsq_scale_forward_cpu(const Tensor& eps_hat, const Tensor& delta) {
  Tensor m = batch_op_output("lstsq_scale", eps_hat, delta);
  // (<m, delta>, <delta, delta>)
  const Sums dots = batch_forward(eps_hat, delta, m, [](const auto& k, auto* mp, const auto* deltap, int64_t len,
                                                         auto n_batch, Sums& acc) {
    k.lstsq_tile(mp, deltap, len, n_batch, &acc[0], &acc[1]);
  });
  return {at::scalar_tensor(dots[0] / dots[1], m.options()), m};
}

std::tuple<Tensor, Tensor> lstsq_scale_backward_cpu(const Tensor& grad, const Tensor& m, const Tensor& delta,
                                                    const Tensor& lam, int64_t n_batch, std::array<bool, 2> mask) {
  check_lstsq_scale_backward(grad, m, delta, lam, n_batch);
  const Tensor mc = m.contiguous(), dc = prepared(delta, m.scalar_type());
  return batch_backward(mc, n_batch, mask, [&](auto zero, auto* gdp) {
    using T = decltype(zero);
    const T* mp = mc.const_data_ptr<T>();
    const T* dp = dc.const_data_ptr<T>();
    double den = 0;
    for (int64_t k = 0, n = dc.numel(); k < n; ++k) {
      den += static_cast<double>(dp[k]) * static_cast<double>(dp[k]);
    }
    // In double: lstsq_delta_grad and lstsq_eps_grad with scale = g / <d, d>.
    const double scale = grad.item<double>() / den, l = lam.item<double>(), nb = static_cast<double>(n_batch);
    return [=](int64_t j) {
      const double mv = static_cast<double>(mp[j]), dv = static_cast<double>(dp[j]);
      if (gdp != nullptr) {
        gdp[j] = static_cast<T>(lstsq_delta_grad(scale, mv, dv, l));
      }
      return static_cast<T>(lstsq_eps_grad(scale, dv, nb));
    };
  });
}

}  // namespace
}  // namespace pdfast

TORCH_LIBRARY_FRAGMENT(pdfast, m) {
  // The CPU kernel table in use: "AVX512", "AVX2" or "DEFAULT" (torch's capability, capped by this build).
  m.def("cpu_capability() -> str", &pdfast::cpu_capability);
}

PDFAST_REGISTER_KERNELS(CPU, cpu)

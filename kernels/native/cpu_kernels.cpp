// pdfast native ops, CPU inner kernels for one CPU capability (CPU_CAPABILITY = DEFAULT, AVX2 or AVX512, set by
// CMakeLists.txt together with that capability's -m flags for this file only). at::vec::Vectorized resolves to the
// capability's intrinsics; the tables at the bottom are what ops_cpu.cpp calls.
//
// The batch reductions are register-blocked: a block of kBlock vectors of positions is accumulated over all rows in
// registers (each input element read once, each output written once), then the block is finished in registers.
#include "cpu_kernels.h"
#include "formulas.h"

#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>

#ifndef CPU_CAPABILITY
#error "cpu_kernels.cpp is compiled with -DCPU_CAPABILITY=DEFAULT|AVX2|AVX512 (see CMakeLists.txt)"
#endif

namespace pdfast::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

constexpr int kBlock = 4;  // vectors of positions per register block

template <typename T>
double sum_lanes(const Vectorized<T>& v) {
  __at_align__ T lanes[Vectorized<T>::size()];
  v.store(lanes);
  double s = 0;
  for (int i = 0; i < Vectorized<T>::size(); ++i) {
    s += static_cast<double>(lanes[i]);
  }
  return s;
}

// ---------------------------------------------------------------- ddpm_update

template <typename T, bool NOISE>
void ddpm_update_row_impl(const T* x, const T* eps, const T* noise, T* out, int64_t n, T c1, T c2, T sigma) {
  using Vec = Vectorized<T>;
  const Vec vc1(c1), vc2(c2), vsigma(sigma);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    Vec o = vc1 * (Vec::loadu(x + k) - vc2 * Vec::loadu(eps + k));
    if constexpr (NOISE) {
      o = o + vsigma * Vec::loadu(noise + k);
    }
    o.store(out + k);
  }
  for (; k < n; ++k) {
    out[k] = ddpm_update_at<T, NOISE>(x, eps, noise, k, c1, c2, sigma);
  }
}

template <typename T>
void ddpm_update_row(const T* x, const T* eps, const T* noise, T* out, int64_t n, T c1, T c2, T sigma) {
  with_noise_term(noise != nullptr, [&](auto has_noise) {
    ddpm_update_row_impl<T, decltype(has_noise)::value>(x, eps, noise, out, n, c1, c2, sigma);
  });
}

template <typename T>
void ddpm_backward_row(const T* g, T* gx, T* geps, T* gnoise, int64_t n, T c1, T c2, T sigma) {
  using Vec = Vectorized<T>;
  const Vec vc1(c1), vneg_c2(-c2), vsigma(sigma);
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    const Vec gv = Vec::loadu(g + k);
    const Vec v = vc1 * gv;
    if (gx != nullptr) {
      v.store(gx + k);
    }
    if (geps != nullptr) {
      (v * vneg_c2).store(geps + k);
    }
    if (gnoise != nullptr) {
      (vsigma * gv).store(gnoise + k);
    }
  }
  for (; k < n; ++k) {
    ddpm_backward_at(g, k, gx, geps, gnoise, c1, c2, sigma);
  }
}

// ---------------------------------------------------------------- batch sum and the finishing passes

template <typename T, int W>
void batch_sum_block(const T* src, int64_t stride, int64_t n_batch, int64_t k, T* acc_out) {
  using Vec = Vectorized<T>;
  Vec acc[W];
  for (int w = 0; w < W; ++w) {
    acc[w] = Vec::loadu(src + k + w * Vec::size());
  }
  for (int64_t b = 1; b < n_batch; ++b) {
    const T* row = src + b * stride + k;
    for (int w = 0; w < W; ++w) {
      acc[w] = acc[w] + Vec::loadu(row + w * Vec::size());
    }
  }
  for (int w = 0; w < W; ++w) {
    acc[w].store(acc_out + k + w * Vec::size());
  }
}

template <typename T>
void batch_sum(const T* src, int64_t stride, int64_t n_batch, int64_t n, T* acc) {
  using Vec = Vectorized<T>;
  int64_t k = 0;
  for (; k + kBlock * Vec::size() <= n; k += kBlock * Vec::size()) {
    batch_sum_block<T, kBlock>(src, stride, n_batch, k, acc);
  }
  for (; k + Vec::size() <= n; k += Vec::size()) {
    batch_sum_block<T, 1>(src, stride, n_batch, k, acc);
  }
  for (; k < n; ++k) {
    T s = src[k];
    for (int64_t b = 1; b < n_batch; ++b) {
      s += src[b * stride + k];
    }
    acc[k] = s;
  }
}

template <typename T, bool L2>
double shift_loss_tile_impl(T* d, const T* delta, int64_t n, T n_batch, T lam) {
  using Vec = Vectorized<T>;
  const Vec vb(n_batch), vlam(lam);
  Vec vsum(T(0));
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    const Vec dv = Vec::loadu(d + k) / vb - vlam * Vec::loadu(delta + k);
    dv.store(d + k);
    if constexpr (L2) {
      vsum = vsum + dv * dv;
    } else {
      vsum = vsum + dv.abs();
    }
  }
  double s = sum_lanes(vsum);
  for (; k < n; ++k) {
    const T dv = d[k] / n_batch - lam * delta[k];
    d[k] = dv;
    s += static_cast<double>(L2 ? dv * dv : std::abs(dv));
  }
  return s;
}

template <typename T>
double shift_loss_tile(T* d, const T* delta, int64_t n, T n_batch, T lam, bool l2) {
  return l2 ? shift_loss_tile_impl<T, true>(d, delta, n, n_batch, lam)
            : shift_loss_tile_impl<T, false>(d, delta, n, n_batch, lam);
}

template <typename T>
void lstsq_tile(T* m, const T* delta, int64_t n, T n_batch, double* num, double* den) {
  using Vec = Vectorized<T>;
  const Vec vb(n_batch);
  Vec vnum(T(0)), vden(T(0));
  int64_t k = 0;
  for (; k + Vec::size() <= n; k += Vec::size()) {
    const Vec mv = Vec::loadu(m + k) / vb, dv = Vec::loadu(delta + k);
    mv.store(m + k);
    vnum = vnum + mv * dv;
    vden = vden + dv * dv;
  }
  double snum = sum_lanes(vnum), sden = sum_lanes(vden);
  for (; k < n; ++k) {
    m[k] = m[k] / n_batch;
    snum += static_cast<double>(m[k] * delta[k]);
    sden += static_cast<double>(delta[k] * delta[k]);
  }
  *num += snum;
  *den += sden;
}

template <typename T>
const Kernels<T>& table() {
  static const Kernels<T> kernels{&ddpm_update_row<T>, &ddpm_backward_row<T>, &batch_sum<T>, &shift_loss_tile<T>,
                                  &lstsq_tile<T>};
  return kernels;
}

#define PDFAST_STR2(x) #x
#define PDFAST_STR(x) PDFAST_STR2(x)

}  // namespace

const Kernels<float>& table_f32() { return table<float>(); }
const Kernels<double>& table_f64() { return table<double>(); }
const char* name() { return PDFAST_STR(CPU_CAPABILITY); }

}  // namespace CPU_CAPABILITY
}  // namespace pdfast::cpu

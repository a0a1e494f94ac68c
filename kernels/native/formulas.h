// pdfast native ops: the per-element arithmetic written once for both backends, the CPU kernels (cpu_kernels.cpp's
// scalar paths, ops_cpu.cpp's backward loops) and the CUDA kernels (ops_cuda.cu, where these are __host__
// __device__). Plain arithmetic on pointers and scalars: no ATen, no threads, so the per-capability CPU files may
// include it (cpu_kernels.h explains why they must not touch more).
#pragma once

#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define PDFAST_HOST_DEVICE __host__ __device__
#else
#define PDFAST_HOST_DEVICE
#endif

namespace pdfast {
// An unnamed namespace on purpose: internal linkage, so each translation unit keeps its own copy. cpu_kernels.cpp is
// compiled once per CPU capability with that capability's -m flags; shared (inline) copies could be merged by the
// linker into one AVX512 copy that a DEFAULT caller would then run.
namespace {

// Calls f(std::bool_constant<NOISE>{}) for ddpm_update's optional noise term, so the kernels are compiled once per
// case instead of testing the flag per element.
template <typename F>
void with_noise_term(bool noise, F&& f) {
  if (noise) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// ddpm_update at element i: c1 (x - c2 eps) + sigma noise, noise not read when NOISE is off.
template <typename T, bool NOISE>
PDFAST_HOST_DEVICE inline T ddpm_update_at(const T* x, const T* eps, const T* noise, int64_t i, T c1, T c2, T sigma) {
  T o = c1 * (x[i] - c2 * eps[i]);
  if constexpr (NOISE) {
    o = o + sigma * noise[i];
  }
  return o;
}

// The update's backward at element i: v = c1 g to gx, -c2 v to geps, sigma g to gnoise (each skipped when null).
template <typename T>
PDFAST_HOST_DEVICE inline void ddpm_backward_at(const T* g, int64_t i, T* gx, T* geps, T* gnoise, T c1, T c2,
                                                T sigma) {
  const T v = c1 * g[i];
  if (gx != nullptr) {
    gx[i] = v;
  }
  if (geps != nullptr) {
    geps[i] = v * -c2;
  }
  if (gnoise != nullptr) {
    gnoise[i] = sigma * g[i];
  }
}

// shift_loss's gradient with respect to d at one position, gn = the upstream gradient / numel (the mean's backward):
// gn sign(d) for l1 (sign(0) = 0, as torch.sign), gn 2 d for l2.
template <typename T>
PDFAST_HOST_DEVICE inline T shift_loss_grad(T gn, T d, bool l2) {
  return l2 ? gn * (T(2) * d) : gn * static_cast<T>((d > T(0)) - (d < T(0)));
}

// lstsq_scale = <m, d> / <d, d>: its gradient with respect to delta at one position is scale (m - 2 lam d), with
// scale = the upstream gradient / <d, d>; with respect to each eps_hat_b it is scale d / B (the batch mean's
// backward).
template <typename A>
PDFAST_HOST_DEVICE inline A lstsq_delta_grad(A scale, A m, A d, A lam) {
  return scale * (m - A(2) * lam * d);
}
template <typename A>
PDFAST_HOST_DEVICE inline A lstsq_eps_grad(A scale, A d, A n_batch) {
  return scale * d / n_batch;
}

}  // namespace
}  // namespace pdfast

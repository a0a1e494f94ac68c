// pdfast native ops, CPU inner kernels: pointer-level loops over one range of per-image positions, written with
// at::vec::Vectorized and compiled once per CPU capability, as ATen does (cpu_kernels.cpp is built with
// CPU_CAPABILITY=DEFAULT, and on x86-64 also =AVX2 and =AVX512 with those files' -m flags only). ops_cpu.cpp, built
// for the baseline ISA, picks the table matching torch's own choice (at::get_cpu_capability(), which honours
// ATEN_CPU_CAPABILITY) at the first call: no -march, the library runs on any CPU torch runs on.
//
// Nothing here may touch at::Tensor or threads: the per-capability files hold arithmetic only (see CMakeLists.txt).
#pragma once

#include <cstdint>

namespace pdfast::cpu {

template <typename T>
struct Kernels {
  // out[k] = c1 (x[k] - c2 eps[k]) + sigma noise[k] for k < n; noise may be null (term off).
  void (*ddpm_update_row)(const T* x, const T* eps, const T* noise, T* out, int64_t n, T c1, T c2, T sigma);
  // The update's backward for k < n, v = c1 g[k]: gx[k] = v, geps[k] = -c2 v, gnoise[k] = sigma g[k] (each skipped
  // when null).
  void (*ddpm_backward_row)(const T* g, T* gx, T* geps, T* gnoise, int64_t n, T c1, T c2, T sigma);
  // acc[k] = sum_b src[b stride + k], rows added in batch order.
  void (*batch_sum)(const T* src, int64_t stride, int64_t n_batch, int64_t n, T* acc);
  // In place d[k] = d[k] / n_batch - lam delta[k] (d holds the batch sum); returns sum |d| (l2: sum d^2).
  double (*shift_loss_tile)(T* d, const T* delta, int64_t n, T n_batch, T lam, bool l2);
  // In place m[k] = m[k] / n_batch (m holds the batch sum); adds <m, delta> to *num and <delta, delta> to *den.
  void (*lstsq_tile)(T* m, const T* delta, int64_t n, T n_batch, double* num, double* den);
};

// One table per capability; the namespaces match CPU_CAPABILITY in cpu_kernels.cpp.
#define PDFAST_DECLARE_CPU_TABLES(CAP)       \
  namespace CAP {                            \
  const Kernels<float>& table_f32();         \
  const Kernels<double>& table_f64();        \
  const char* name();                        \
  }
PDFAST_DECLARE_CPU_TABLES(DEFAULT)
#ifdef PDFAST_CPU_AVX2
PDFAST_DECLARE_CPU_TABLES(AVX2)
#endif
#ifdef PDFAST_CPU_AVX512
PDFAST_DECLARE_CPU_TABLES(AVX512)
#endif
#undef PDFAST_DECLARE_CPU_TABLES

}  // namespace pdfast::cpu

// pdfast native ops, CUDA kernels (built only when nvcc is found and torch has CUDA; see CMakeLists.txt).
//
// Same contract as ops_cpu.cpp, the same shared checks and allocation (ops.h) and per-element formulas
// (formulas.h). Elementwise kernels use a grid-stride loop; the batch reductions give each thread one per-image
// position and loop over the batch (coalesced: neighbouring threads read neighbouring positions), then reduce per
// block into partials that torch sums on the device. Scalars the backward needs (the upstream gradient, lambda) are
// read on the device: no host synchronisation. In auto mode pdfast dispatches CUDA tensors to the Triton kernels;
// these run with PDFAST_KERNELS=native.
#include "formulas.h"
#include "ops.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

namespace pdfast {
namespace {

using at::Tensor;
using OptTensor = std::optional<at::Tensor>;

constexpr int kThreads = 256;

int64_t multiprocessors() {
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  return std::max(sms, 1);
}

int elementwise_blocks(int64_t n) {
  const int64_t max_blocks = multiprocessors() * 8;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>((n + kThreads - 1) / kThreads, max_blocks)));
}

int position_blocks(int64_t n) { return static_cast<int>(std::max<int64_t>(1, (n + kThreads - 1) / kThreads)); }

// This thread's first index and the grid-stride step.
__device__ int64_t thread_index() { return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; }
__device__ int64_t grid_stride() { return static_cast<int64_t>(blockDim.x) * gridDim.x; }

// Sum of v over the block into thread 0's return value (kThreads threads).
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A shared[kThreads];
  shared[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) {
      shared[threadIdx.x] += shared[threadIdx.x + s];
    }
    __syncthreads();
  }
  return shared[0];
}

// The sum over the batch of eps at per-image position j.
template <typename T>
__device__ T batch_sum_at(const T* __restrict__ eps, int64_t j, int64_t n_batch, int64_t n_per_image) {
  T acc = T(0);
  for (int64_t b = 0, i = j; b < n_batch; ++b, i += n_per_image) {
    acc += eps[i];
  }
  return acc;
}

// geps[b, j] = ge for every image b (geps null: not wanted).
template <typename T>
__device__ void broadcast_at(T* geps, T ge, int64_t j, int64_t n_batch, int64_t n_per_image) {
  if (geps != nullptr) {
    for (int64_t b = 0, i = j; b < n_batch; ++b, i += n_per_image) {
      geps[i] = ge;
    }
  }
}

// ---------------------------------------------------------------- ddpm_update

template <typename T, bool NOISE>
__global__ void ddpm_update_kernel(const T* __restrict__ x, const T* __restrict__ eps, const T* __restrict__ noise,
                                   T* __restrict__ out, int64_t total, T c1, T c2, T sigma) {
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    out[i] = ddpm_update_at<T, NOISE>(x, eps, noise, i, c1, c2, sigma);
  }
}

Tensor ddpm_update_cuda(const Tensor& x, const Tensor& eps, double c1, double c2, double sigma,
                        const OptTensor& noise) {
  const UpdateInputs in = prepare_ddpm_update(x, eps, noise);  // checks first: one-line device errors
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t total = x.numel();
  if (total > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(in.out.scalar_type(), "pdfast::ddpm_update (CUDA)", [&] {
      using T = scalar_t;
      with_noise_term(in.noise.defined(), [&](auto has_noise) {
        ddpm_update_kernel<T, decltype(has_noise)::value><<<elementwise_blocks(total), kThreads, 0, stream>>>(
            in.x.const_data_ptr<T>(), in.eps.const_data_ptr<T>(), const_data_or_null<T>(in.noise),
            in.out.data_ptr<T>(), total, static_cast<T>(c1), static_cast<T>(c2), static_cast<T>(sigma));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return in.result();
}

// The update's backward, elementwise (grid-stride).
template <typename T>
__global__ void ddpm_backward_kernel(const T* __restrict__ g, T* gx, T* geps, T* gnoise, int64_t total, T c1, T c2,
                                     T sigma) {
  for (int64_t i = thread_index(); i < total; i += grid_stride()) {
    ddpm_backward_at(g, i, gx, geps, gnoise, c1, c2, sigma);
  }
}

std::tuple<Tensor, Tensor, Tensor> ddpm_update_backward_cuda(const Tensor& grad, double c1, double c2, double sigma,
                                                             std::array<bool, 3> mask) {
  const c10::cuda::CUDAGuard guard(grad.device());
  const UpdateGrads out = prepare_ddpm_update_backward(grad, mask);
  if (out.grad.defined()) {
    const int64_t total = out.grad.numel();
    AT_DISPATCH_FLOATING_TYPES(out.grad.scalar_type(), "pdfast::ddpm_update_backward (CUDA)", [&] {
      using T = scalar_t;
      ddpm_backward_kernel<T><<<elementwise_blocks(total), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
          out.grad.const_data_ptr<T>(), data_or_null<T>(out.gx), data_or_null<T>(out.geps),
          data_or_null<T>(out.gnoise), total, static_cast<T>(c1), static_cast<T>(c2), static_cast<T>(sigma));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return out.outputs();
}

// ---------------------------------------------------------------- the batch ops: shift_loss, lstsq_scale

// The batch ops' forward, one thread per per-image position: the batch mean m, then
//   LSTSQ false (shift_loss): out = d = m - lam delta, partial row 0 = the block's sum of |d| (l2: d^2)
//   LSTSQ true (lstsq_scale): out = m, partial rows 0 and 1 = the block's <m, delta> and <delta, delta>
template <typename T, typename A, bool LSTSQ>
__global__ void batch_forward_kernel(const T* __restrict__ eps, const T* __restrict__ delta, T* __restrict__ out,
                                     A* __restrict__ partial, int64_t n_batch, int64_t n_per_image, T lam, bool l2) {
  const int64_t j = thread_index();
  A v0 = A(0), v1 = A(0);
  if (j < n_per_image) {
    const T mv = batch_sum_at(eps, j, n_batch, n_per_image) / static_cast<T>(n_batch), dv = delta[j];
    if constexpr (LSTSQ) {
      out[j] = mv;
      v0 = static_cast<A>(mv * dv);
      v1 = static_cast<A>(dv * dv);
    } else {
      const T d = mv - lam * dv;
      out[j] = d;
      v0 = static_cast<A>(l2 ? d * d : (d < T(0) ? -d : d));
    }
  }
  const A s0 = block_sum(v0);
  if (threadIdx.x == 0) {
    partial[blockIdx.x] = s0;
  }
  if constexpr (LSTSQ) {
    __syncthreads();  // block_sum's shared buffer is reused
    const A s1 = block_sum(v1);
    if (threadIdx.x == 0) {
      partial[gridDim.x + blockIdx.x] = s1;
    }
  }
}

// Runs batch_forward_kernel into `out` (batch_op_output's d or m); returns the scalar in out's dtype: mean |d| (l2:
// mean d^2) for shift_loss, <m, delta> / <delta, delta> for lstsq_scale.
template <bool LSTSQ>
Tensor batch_forward(const Tensor& eps_hat, const Tensor& delta, const Tensor& out, double lam, bool l2) {
  const c10::cuda::CUDAGuard guard(eps_hat.device());
  const int64_t n_batch = eps_hat.size(0), n = out.numel();
  if (n == 0) {
    return at::full({}, NAN, out.options());
  }
  const auto ct = out.scalar_type();
  const Tensor ec = prepared(eps_hat, ct), dc = prepared(delta, ct);
  const int blocks = position_blocks(n);
  Tensor result;
  AT_DISPATCH_FLOATING_TYPES(ct, "pdfast batch op forward (CUDA)", [&] {
    using T = scalar_t;
    using A = at::opmath_type<T>;
    Tensor partial = at::empty({LSTSQ ? 2 : 1, blocks}, out.options().dtype(c10::CppTypeToScalarType<A>::value));
    batch_forward_kernel<T, A, LSTSQ><<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        ec.const_data_ptr<T>(), dc.const_data_ptr<T>(), out.data_ptr<T>(), partial.data_ptr<A>(), n_batch, n,
        static_cast<T>(lam), l2);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const Tensor sums = partial.sum(1);
    result = (LSTSQ ? sums[0] / sums[1] : sums[0] / static_cast<double>(n)).to(ct);
  });
  return result;
}

std::tuple<Tensor, Tensor> shift_loss_forward_cuda(const Tensor& eps_hat, const Tensor& delta, double lam, bool l2) {
  Tensor d = batch_op_output("shift_loss", eps_hat, delta);
  return {batch_forward<false>(eps_hat, delta, d, lam, l2), d};
}

std::tuple<Tensor, Tensor> lstsq_scale_forward_cuda(const Tensor& eps_hat, const Tensor& delta) {
  Tensor m = batch_op_output("lstsq_scale", eps_hat, delta);
  return {batch_forward<true>(eps_hat, delta, m, 0.0, false), m};
}

// The batch ops' backward: allocates {geps, gdelta} like the saved per-image tensor (d or m, contiguous) and, unless
// there is nothing to write, calls launch(T{}, geps as T* or null, gdelta as T* or null) in saved's dtype T to launch
// the kernel that fills them.
template <typename Launch>
std::tuple<Tensor, Tensor> batch_backward(const Tensor& saved, int64_t n_batch, std::array<bool, 2> mask,
                                          Launch launch) {
  auto [geps, gdelta] = batch_op_grads(saved, n_batch, mask);
  if (saved.numel() == 0 || !(mask[0] || mask[1])) {
    return {geps, gdelta};
  }
  AT_DISPATCH_FLOATING_TYPES(saved.scalar_type(), "pdfast batch op backward (CUDA)", [&] {
    using T = scalar_t;
    launch(T{}, data_or_null<T>(geps), data_or_null<T>(gdelta));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {geps, gdelta};
}

template <typename T>
__global__ void shift_loss_backward_kernel(const T* __restrict__ grad, const T* __restrict__ d, T* geps, T* gdelta,
                                           int64_t n_batch, int64_t n_per_image, T lam, bool l2) {
  const int64_t j = thread_index();
  if (j >= n_per_image) {
    return;
  }
  const T gd = shift_loss_grad(grad[0] / static_cast<T>(n_per_image), d[j], l2);
  if (gdelta != nullptr) {
    gdelta[j] = -gd * lam;
  }
  broadcast_at(geps, gd / static_cast<T>(n_batch), j, n_batch, n_per_image);
}

std::tuple<Tensor, Tensor> shift_loss_backward_cuda(const Tensor& grad, const Tensor& d, int64_t n_batch, double lam,
                                                    bool l2, std::array<bool, 2> mask) {
  check_shift_loss_backward(grad, n_batch);
  const c10::cuda::CUDAGuard guard(d.device());
  const Tensor dc = d.contiguous(), g = prepared(grad, dc.scalar_type());
  const int64_t n = dc.numel();
  return batch_backward(dc, n_batch, mask, [&](auto zero, auto* geps, auto* gdelta) {
    using T = decltype(zero);
    shift_loss_backward_kernel<T><<<position_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<T>(), dc.const_data_ptr<T>(), geps, gdelta, n_batch, n, static_cast<T>(lam), l2);
  });
}

template <typename T>
__global__ void lstsq_scale_backward_kernel(const T* __restrict__ grad, const T* __restrict__ lam,
                                            const T* __restrict__ den, const T* __restrict__ m,
                                            const T* __restrict__ delta, T* geps, T* gdelta, int64_t n_batch,
                                            int64_t n_per_image) {
  const int64_t j = thread_index();
  if (j >= n_per_image) {
    return;
  }
  const T scale = grad[0] / den[0], dv = delta[j];
  if (gdelta != nullptr) {
    gdelta[j] = lstsq_delta_grad(scale, m[j], dv, lam[0]);
  }
  broadcast_at(geps, lstsq_eps_grad(scale, dv, static_cast<T>(n_batch)), j, n_batch, n_per_image);
}

std::tuple<Tensor, Tensor> lstsq_scale_backward_cuda(const Tensor& grad, const Tensor& m, const Tensor& delta,
                                                     const Tensor& lam, int64_t n_batch, std::array<bool, 2> mask) {
  check_lstsq_scale_backward(grad, m, delta, lam, n_batch);
  const c10::cuda::CUDAGuard guard(m.device());
  const auto ct = m.scalar_type();
  const Tensor mc = m.contiguous(), dc = prepared(delta, ct), g = prepared(grad, ct), lc = prepared(lam, ct);
  const Tensor den = dc.reshape(-1).dot(dc.reshape(-1));
  const int64_t n = mc.numel();
  return batch_backward(mc, n_batch, mask, [&](auto zero, auto* geps, auto* gdelta) {
    using T = decltype(zero);
    lstsq_scale_backward_kernel<T><<<position_blocks(n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        g.const_data_ptr<T>(), lc.const_data_ptr<T>(), den.const_data_ptr<T>(), mc.const_data_ptr<T>(),
        dc.const_data_ptr<T>(), geps, gdelta, n_batch, n);
  });
}

}  // namespace
}  // namespace pdfast

PDFAST_REGISTER_KERNELS(CUDA, cuda)

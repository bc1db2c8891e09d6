// Fused batch-norm apply (+ shortcut) + multi-step LIF on CUDA: one thread per neuron walks over
// T with the state in fp32 registers (fp64 for fp64 input). Same schema, layout (channels-last
// without a copy, see bn_lif_common.h) and arithmetic (lif_math.h) as bn_lif_cpu.cpp;
// equations: tdsnn/ops/bn_lif.py.
//
// Bytes moved per neuron-step (E = element size of y):
//   forward:  read y (E) [+ shortcut, E] + write spikes (E) [+ H, 4 when asked]
//   backward: read y, grad_spikes (2E) [+ shortcut, E] + recomputed H to scratch and back (8)
//             + write grad_y (E) [+ grad_shortcut, E]; in training also dL/dz to scratch and
//             back (8) and y again (E) for the batch-statistics term.
// Neither the membrane nor the normalised input is kept between forward and backward.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "bn_lif_common.h"
#include "lif_common.h"
#include "lif_math.h"

namespace {

using namespace tdsnn_lif;
using namespace tdsnn_bn_lif;

constexpr int kThreads = 256;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t input(const View<scalar_t, acc_t>& in, const Affine<acc_t>& a,
                                       int64_t offset) {
  acc_t z = static_cast<acc_t>(in.y[offset]) * a.scale + a.shift;
  if (in.shortcut) z += static_cast<acc_t>(in.shortcut[offset]);
  return z;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bn_lif_forward_kernel(View<scalar_t, acc_t> in, scalar_t* __restrict__ spikes,
                          acc_t* __restrict__ membrane, LIFConst<acc_t> c) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= in.n) return;
  const Affine<acc_t> a =
      channel_affine(in.mean, in.invstd, in.weight, in.bias, in.channel(i));
  acc_t v = c.rest;
  for (int64_t t = 0; t < in.steps; ++t) {
    const int64_t offset = t * in.n + i;
    const acc_t h = step(input(in, a, offset), v, c);
    spikes[offset] = fires(h, c) ? scalar_t(1) : scalar_t(0);
    if (membrane) membrane[offset] = h;
  }
}

// Adds ``value`` to sums[ch]: one atomic per warp when the whole warp is in one channel. Every
// lane of the warp calls it (kThreads is a multiple of 32 and no lane has returned).
__device__ __forceinline__ void add_to_channel(double* sums, int64_t ch, double value) {
  constexpr unsigned kAll = 0xffffffffu;
  const long long first = __shfl_sync(kAll, static_cast<long long>(ch), 0);
  if (__all_sync(kAll, ch == first)) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(kAll, value, offset);
    if ((threadIdx.x & 31) == 0) atomicAdd(sums + ch, value);
  } else {
    atomicAdd(sums + ch, value);
  }
}

// Backward, first pass, per neuron: recompute H over T (into the scratch ``h``), then the
// LIF's reverse-time recurrence; dL/dz to grad_z (training) or scale·dL/dz to grad_y (eval),
// to grad_shortcut, and its sums over the channel (plain and times x_hat) to ``sums`` [2, C].
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bn_lif_backward_kernel(View<scalar_t, acc_t> in, const scalar_t* __restrict__ grad_spikes,
                           const acc_t* __restrict__ grad_mem, acc_t* __restrict__ h,
                           acc_t* __restrict__ grad_z, scalar_t* __restrict__ grad_y,
                           scalar_t* __restrict__ grad_shortcut, double* __restrict__ sums,
                           LIFConst<acc_t> c, bool detach_reset, Surrogate surrogate,
                           acc_t alpha) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool active = i < in.n;
  const int64_t ch = active ? in.channel(i) : 0;
  acc_t sum_g = 0, sum_gx = 0;
  if (active) {
    const Affine<acc_t> a = channel_affine(in.mean, in.invstd, in.weight, in.bias, ch);
    const acc_t mu = in.mean[ch], is = in.invstd[ch];
    acc_t v = c.rest;
    for (int64_t t = 0; t < in.steps; ++t) {
      const int64_t offset = t * in.n + i;
      h[offset] = step(input(in, a, offset), v, c);  // the forward's H
    }
    acc_t later = 0;  // grad_h[t+1]
    for (int64_t t = in.steps - 1; t >= 0; --t) {
      const int64_t offset = t * in.n + i;
      const acc_t grad_s = grad_spikes ? static_cast<acc_t>(grad_spikes[offset]) : acc_t(0);
      const acc_t grad_h = grad_mem ? grad_mem[offset] : no_grad<acc_t>();
      later = charged_grad(charged(h[offset], false, c), grad_s, grad_h, later, c, surrogate,
                           detach_reset, alpha);
      const acc_t gz = input_grad(later, c);
      const acc_t x_hat = (static_cast<acc_t>(in.y[offset]) - mu) * is;
      sum_g += gz;
      sum_gx += gz * x_hat;
      if (grad_z) grad_z[offset] = gz;
      if (grad_y) grad_y[offset] = static_cast<scalar_t>(gz * a.scale);
      if (grad_shortcut) grad_shortcut[offset] = static_cast<scalar_t>(gz);
    }
  }
  add_to_channel(sums, ch, active ? static_cast<double>(sum_g) : 0.0);
  add_to_channel(sums + in.channels, ch, active ? static_cast<double>(sum_gx) : 0.0);
}

// Backward, second pass (training), per element: dL/dy = scale·(dL/dz - mean_g[c] -
// x_hat·mean_gx[c]).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    bn_lif_batch_stat_kernel(View<scalar_t, acc_t> in, const acc_t* __restrict__ grad_z,
                             const acc_t* __restrict__ mean_g, const acc_t* __restrict__ mean_gx,
                             scalar_t* __restrict__ grad_y) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (e >= in.steps * in.n) return;
  const int64_t ch = in.channel(e % in.n);
  const Affine<acc_t> a = channel_affine(in.mean, in.invstd, in.weight, in.bias, ch);
  const acc_t x_hat = (static_cast<acc_t>(in.y[e]) - in.mean[ch]) * in.invstd[ch];
  grad_y[e] = static_cast<scalar_t>(a.scale * (grad_z[e] - mean_g[ch] - x_hat * mean_gx[ch]));
}

unsigned blocks_for(int64_t count) {
  return static_cast<unsigned>((count + kThreads - 1) / kThreads);
}

// The launches behind bn_lif_common.h's bn_lif_forward_op / bn_lif_backward_op.
struct CudaKernels {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

  template <typename scalar_t, typename acc_t>
  static void forward(const View<scalar_t, acc_t>& in, scalar_t* spikes, acc_t* membrane,
                      const LIFConst<acc_t>& c) {
    bn_lif_forward_kernel<scalar_t, acc_t>
        <<<blocks_for(in.n), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(in, spikes,
                                                                                membrane, c);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  // The first pass writes the recomputed H to a scratch tensor and dL/dz to another (training;
  // in eval scale·dL/dz goes to grad_y at once); the second pass (training) brings dL/dz
  // through the batch statistics into grad_y.
  template <typename scalar_t, typename acc_t>
  static at::Tensor backward(const View<scalar_t, acc_t>& in,
                             const BackwardArgs<scalar_t, acc_t>& a, const at::Tensor& y) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    const auto acc_options = y.options().dtype(param_dtype(y.scalar_type()));
    at::Tensor sums = at::zeros({2, in.channels}, y.options().dtype(at::kDouble));
    at::Tensor h = at::empty_like(y, acc_options);  // recomputed H
    at::Tensor grad_z = a.training ? at::empty_like(y, acc_options) : h;
    bn_lif_backward_kernel<scalar_t, acc_t><<<blocks_for(in.n), kThreads, 0, stream>>>(
        in, a.grad_spikes, a.grad_mem, h.mutable_data_ptr<acc_t>(),
        a.training ? grad_z.mutable_data_ptr<acc_t>() : nullptr,
        a.training ? nullptr : a.grad_y, a.grad_shortcut, sums.mutable_data_ptr<double>(), a.c,
        a.detach_reset, a.surrogate, a.alpha);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!a.training) return sums;
    const at::Tensor means = sums.div(static_cast<double>(y.numel() / in.channels))
                                 .to(param_dtype(y.scalar_type()));
    const acc_t* mg = means.const_data_ptr<acc_t>();
    bn_lif_batch_stat_kernel<scalar_t, acc_t><<<blocks_for(y.numel()), kThreads, 0, stream>>>(
        in, grad_z.const_data_ptr<acc_t>(), mg, mg + in.channels, a.grad_y);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return sums;
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CUDA, m) {
  m.impl("bn_lif_forward", &bn_lif_forward_op<CudaKernels>);
  m.impl("bn_lif_backward", &bn_lif_backward_op<CudaKernels>);
}

// Multi-step LIF: forward over all T steps and the reverse-time backward, one thread per VEC
// neurons, the state in fp32 registers (fp64 for fp64 input). Any time-major dense layout
// (channels-last included) runs without a copy, in storage order (lif_common.h). Arithmetic:
// lif_math.h; equations: tdsnn/neurons.py.
//
// Bytes moved per neuron-step (E = element size of the input dtype):
//   forward:  read x (E) + write spikes (E) + write H (E for fp16/bf16 without full_membrane,
//             else 4)                                          -> 3E (fp16/bf16), 12 (fp32)
//   backward: read grad_spikes (E) + read H (as stored) + write grad_x (E) [+ read grad_H, 4]
//                                                              -> 3E (fp16/bf16), 12 (fp32)
// The spike is not saved: backward recomputes it from the stored membrane (see store_membrane).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cmath>
#include <string>

#include "lif_common.h"
#include "lif_math.h"

namespace {

using namespace tdsnn_lif;

constexpr int kThreads = 256;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

// Membrane storage. float/double: H itself. half/bf16: U = H - v_threshold, which keeps the
// resolution near the threshold where the surrogate is steep, rounded towards the side of 0 it
// was on so that (U >= 0) == fired.
template <typename mem_t>
constexpr bool kShifted = sizeof(mem_t) == 2;

template <typename mem_t, typename acc_t>
__device__ __forceinline__ mem_t store_membrane(acc_t h, bool fired, acc_t v_threshold) {
  return static_cast<mem_t>(h);
}

template <>
__device__ __forceinline__ c10::Half store_membrane<c10::Half, float>(float h, bool fired,
                                                                      float v_threshold) {
  const float u = h - v_threshold;
  __half r = __float2half_rn(u);
  if ((__half2float(r) >= 0.f) != fired) r = fired ? __float2half_ru(u) : __float2half_rd(u);
  return c10::Half(__half_as_ushort(r), c10::Half::from_bits());
}

template <>
__device__ __forceinline__ c10::BFloat16 store_membrane<c10::BFloat16, float>(float h, bool fired,
                                                                              float v_threshold) {
  const float u = h - v_threshold;
  __nv_bfloat16 r = __float2bfloat16_rn(u);
  if ((__bfloat162float(r) >= 0.f) != fired) {
    r = fired ? __float2bfloat16_ru(u) : __float2bfloat16_rd(u);
  }
  return c10::BFloat16(__bfloat16_as_ushort(r), c10::BFloat16::from_bits());
}

template <typename scalar_t, typename mem_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    lif_forward_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ spikes,
                       mem_t* __restrict__ membrane, int64_t steps, int64_t n,
                       LIFConst<acc_t> c) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  if (first >= n) return;
  acc_t v[VEC];
#pragma unroll
  for (int k = 0; k < VEC; ++k) v[k] = c.rest;
  const bool full = first + VEC <= n;
  auto load = [&](int64_t offset) {
    Pack<scalar_t, VEC> p;
    if (full) {
      p = *reinterpret_cast<const Pack<scalar_t, VEC>*>(x + offset);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) p.v[k] = first + k < n ? x[offset + k] : scalar_t(0);
    }
    return p;
  };
  Pack<scalar_t, VEC> next = load(first);
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t offset = t * n + first;
    const Pack<scalar_t, VEC> xs = next;
    if (t + 1 < steps) next = load(offset + n);  // in flight while this step computes
    Pack<scalar_t, VEC> ss;
    Pack<mem_t, VEC> hs;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t h = step(static_cast<acc_t>(xs.v[k]), v[k], c);
      const bool fired = fires(h, c);
      ss.v[k] = fired ? scalar_t(1) : scalar_t(0);
      hs.v[k] = store_membrane<mem_t, acc_t>(h, fired, c.v_threshold);
    }
    if (full) {
      *reinterpret_cast<Pack<scalar_t, VEC>*>(spikes + offset) = ss;
      *reinterpret_cast<Pack<mem_t, VEC>*>(membrane + offset) = hs;
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (first + k < n) {
          spikes[offset + k] = ss.v[k];
          membrane[offset + k] = hs.v[k];
        }
      }
    }
  }
}

// The reverse-time recurrence (lif_math.h: charged_grad) from the stored membrane.
template <typename grad_t, typename mem_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kThreads)
    lif_backward_kernel(const grad_t* __restrict__ grad_spikes, const acc_t* __restrict__ grad_mem,
                        const mem_t* __restrict__ membrane, grad_t* __restrict__ grad_x,
                        int64_t steps, int64_t n, LIFConst<acc_t> c, bool detach_reset,
                        Surrogate surrogate, acc_t alpha) {
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) * VEC;
  if (first >= n) return;
  const bool full = first + VEC <= n;
  acc_t later[VEC];  // grad_h[t+1]
#pragma unroll
  for (int k = 0; k < VEC; ++k) later[k] = 0;
  auto load = [&](int64_t offset, Pack<mem_t, VEC>& hs, Pack<grad_t, VEC>& gs) {
    if (full) {
      hs = *reinterpret_cast<const Pack<mem_t, VEC>*>(membrane + offset);
      if (grad_spikes) gs = *reinterpret_cast<const Pack<grad_t, VEC>*>(grad_spikes + offset);
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        const bool in = first + k < n;
        hs.v[k] = in ? membrane[offset + k] : mem_t(0);
        gs.v[k] = in && grad_spikes ? grad_spikes[offset + k] : grad_t(0);
      }
    }
  };
  Pack<mem_t, VEC> next_h;
  Pack<grad_t, VEC> next_g;
  load((steps - 1) * n + first, next_h, next_g);
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t offset = t * n + first;
    const Pack<mem_t, VEC> hs = next_h;
    const Pack<grad_t, VEC> gs = next_g;
    if (t > 0) load(offset - n, next_h, next_g);  // in flight while this step computes
    Pack<grad_t, VEC> out;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const Charged<acc_t> m = charged(static_cast<acc_t>(hs.v[k]), kShifted<mem_t>, c);
      const acc_t grad_s = grad_spikes ? static_cast<acc_t>(gs.v[k]) : acc_t(0);
      const acc_t grad_h = grad_mem && first + k < n ? grad_mem[offset + k] : no_grad<acc_t>();
      later[k] = charged_grad(m, grad_s, grad_h, later[k], c, surrogate, detach_reset, alpha);
      out.v[k] = static_cast<grad_t>(input_grad(later[k], c));
    }
    if (full) {
      *reinterpret_cast<Pack<grad_t, VEC>*>(grad_x + offset) = out;
    } else {
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        if (first + k < n) grad_x[offset + k] = out.v[k];
      }
    }
  }
}

template <typename T>
bool aligned(const T* p, int vec) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * vec) == 0;
}

int blocks_for(int64_t n, int vec) {
  return static_cast<int>((n + static_cast<int64_t>(kThreads) * vec - 1) / (kThreads * vec));
}

// The launches behind lif_common.h's lif_forward_op / lif_backward_op: VEC neurons per thread
// with 16-byte accesses where n and the pointers allow, one otherwise.
struct CudaKernels {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CUDA;

  template <typename scalar_t, typename mem_t, typename acc_t>
  static void forward(const scalar_t* x, scalar_t* spikes, mem_t* membrane, int64_t steps,
                      int64_t n, const LIFConst<acc_t>& c) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    constexpr int vec = 16 / sizeof(scalar_t);
    if (n % vec == 0 && aligned(x, vec) && aligned(spikes, vec) && aligned(membrane, vec)) {
      lif_forward_kernel<scalar_t, mem_t, acc_t, vec>
          <<<blocks_for(n, vec), kThreads, 0, stream>>>(x, spikes, membrane, steps, n, c);
    } else {
      lif_forward_kernel<scalar_t, mem_t, acc_t, 1>
          <<<blocks_for(n, 1), kThreads, 0, stream>>>(x, spikes, membrane, steps, n, c);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }

  template <typename grad_t, typename mem_t, typename acc_t>
  static void backward(const grad_t* grad_spikes, const acc_t* grad_mem, const mem_t* membrane,
                       grad_t* grad_x, int64_t steps, int64_t n, const LIFConst<acc_t>& c,
                       bool detach_reset, Surrogate surrogate, acc_t alpha) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    constexpr int vec = 16 / sizeof(grad_t);
    const bool ok = n % vec == 0 && aligned(membrane, vec) && aligned(grad_x, vec) &&
                    (grad_spikes == nullptr || aligned(grad_spikes, vec));
    if (ok) {
      lif_backward_kernel<grad_t, mem_t, acc_t, vec><<<blocks_for(n, vec), kThreads, 0, stream>>>(
          grad_spikes, grad_mem, membrane, grad_x, steps, n, c, detach_reset, surrogate, alpha);
    } else {
      lif_backward_kernel<grad_t, mem_t, acc_t, 1><<<blocks_for(n, 1), kThreads, 0, stream>>>(
          grad_spikes, grad_mem, membrane, grad_x, steps, n, c, detach_reset, surrogate, alpha);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CUDA, m) {
  m.impl("lif_forward", &lif_forward_op<CudaKernels>);
  m.impl("lif_backward", &lif_backward_op<CudaKernels>);
}

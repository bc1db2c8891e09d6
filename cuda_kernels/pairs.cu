// Pair similarities on CUDA: one warp per pair, lanes striding over the feature row, a shuffle
// reduction, and atomic scatter-adds in the backward. Pairs are read as given; when they are
// sorted by their first unit (as tdsnn's radius and lattice pair lists are), consecutive warps
// share x[i] and nearby y[j] rows through L2, so DRAM sees each row about once.
//
// pair_similarity: out[p] = sum_m x[i_p, m] y[j_p, m] over rows x, y [N, M].
//   bytes per pair: 2·M·E from L2 (E = element size); the DRAM floor is (2·N·M + P)·E.
// pair_ccg: CCG[p] = sum_{tau=-W..W} 1/(B (T-|tau|)) sum_{b,t} S_i^b(t) S_j^b(t+tau) from spike
//   trains [T, B, N], transposed once to unit-major rows [N, B, T] so that a pair reads two
//   contiguous rows of B·T values; the lags are applied in registers (no smoothed copy).
// A pair with an index outside [0, N) gives NaN and no gradient (the Python layer checks
// pairs before calling).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ bool valid_pair(int64_t i, int64_t j, int64_t n) {
  return i >= 0 && i < n && j >= 0 && j < n;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_dot_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                            const int64_t* __restrict__ pairs, scalar_t* __restrict__ out,
                            int64_t num_pairs, int64_t n, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (p >= num_pairs) return;
  const int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
  if (!valid_pair(i, j, n)) {
    if (lane == 0) out[p] = std::numeric_limits<scalar_t>::quiet_NaN();
    return;
  }
  const scalar_t* xi = x + i * m;
  const scalar_t* yj = y + j * m;
  acc_t sum = 0;
  for (int64_t k = lane; k < m; k += 32) sum += static_cast<acc_t>(xi[k]) * yj[k];
  sum = warp_sum(sum);
  if (lane == 0) out[p] = static_cast<scalar_t>(sum);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_dot_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                             const scalar_t* __restrict__ y, const int64_t* __restrict__ pairs,
                             scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_y,
                             int64_t num_pairs, int64_t n, int64_t m) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (p >= num_pairs) return;
  const int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
  if (!valid_pair(i, j, n)) return;
  const scalar_t g = grad[p];
  for (int64_t k = lane; k < m; k += 32) {
    atomicAdd(grad_x + i * m + k, g * y[j * m + k]);
    atomicAdd(grad_y + j * m + k, g * x[i * m + k]);
  }
}

// Rows are unit-major [N, B, T]; lag weight w(tau) = 1 / (B (T - |tau|)).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pair_ccg_forward_kernel(const acc_t* __restrict__ rows, const int64_t* __restrict__ pairs,
                            acc_t* __restrict__ out, int64_t num_pairs, int64_t n, int64_t batch,
                            int64_t steps, int64_t window) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (p >= num_pairs) return;
  const int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
  if (!valid_pair(i, j, n)) {
    if (lane == 0) out[p] = std::numeric_limits<acc_t>::quiet_NaN();
    return;
  }
  const int64_t length = batch * steps;
  const acc_t* si = rows + i * length;
  const acc_t* sj = rows + j * length;
  acc_t sum = 0;
  for (int64_t e = lane; e < length; e += 32) {
    const acc_t a = si[e];
    if (a == acc_t(0)) continue;  // spike trains are mostly zeros; 0·s adds nothing
    const int64_t t = e % steps;
    acc_t lagged = 0;
    for (int64_t tau = -window; tau <= window; ++tau) {
      const int64_t t2 = t + tau;
      if (t2 < 0 || t2 >= steps) continue;
      const int64_t lag = tau < 0 ? -tau : tau;
      lagged += sj[e + tau] / static_cast<acc_t>(batch * (steps - lag));
    }
    sum += a * lagged;
  }
  sum = warp_sum(sum);
  if (lane == 0) out[p] = sum;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pair_ccg_backward_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rows,
                             const int64_t* __restrict__ pairs, acc_t* __restrict__ grad_rows,
                             int64_t num_pairs, int64_t n, int64_t batch, int64_t steps,
                             int64_t window) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (p >= num_pairs) return;
  const int64_t i = pairs[2 * p], j = pairs[2 * p + 1];
  if (!valid_pair(i, j, n)) return;
  const acc_t g = grad[p];
  const int64_t length = batch * steps;
  const acc_t* si = rows + i * length;
  const acc_t* sj = rows + j * length;
  acc_t* gi = grad_rows + i * length;
  acc_t* gj = grad_rows + j * length;
  // dCCG/dS_i(e) = sum_tau w(tau) S_j(e + tau); dCCG/dS_j(e) = sum_tau w(tau) S_i(e - tau).
  for (int64_t e = lane; e < length; e += 32) {
    const int64_t t = e % steps;
    acc_t to_i = 0, to_j = 0;
    for (int64_t tau = -window; tau <= window; ++tau) {
      const int64_t lag = tau < 0 ? -tau : tau;
      const acc_t w = acc_t(1) / static_cast<acc_t>(batch * (steps - lag));
      if (t + tau >= 0 && t + tau < steps) to_i += w * sj[e + tau];
      if (t - tau >= 0 && t - tau < steps) to_j += w * si[e - tau];
    }
    if (to_i != acc_t(0)) atomicAdd(gi + e, g * to_i);
    if (to_j != acc_t(0)) atomicAdd(gj + e, g * to_j);
  }
}

int blocks_for(int64_t num_pairs) {
  return static_cast<int>((num_pairs + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

void check_pairs(const char* op, const at::Tensor& pairs, const at::Tensor& data) {
  TORCH_CHECK(pairs.dim() == 2 && pairs.size(1) == 2, op,
              ": pairs must be a [P, 2] tensor, got shape ", pairs.sizes());
  TORCH_CHECK(pairs.scalar_type() == at::kLong, op, ": pairs must be int64, got ",
              pairs.scalar_type());
  TORCH_CHECK(pairs.device() == data.device(), op, ": pairs are on ", pairs.device(),
              " but the data is on ", data.device());
}

void check_rows(const char* op, const at::Tensor& x, const at::Tensor& y) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.sizes() == y.sizes(), op,
              ": x and y must be rows [N, M] of the same shape, got ", x.sizes(), " and ",
              y.sizes());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), op, ": x and y must share a dtype, got ",
              x.scalar_type(), " and ", y.scalar_type());
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x and y must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(y.device() == x.device(), op, ": x and y must be on one device");
}

at::Tensor pair_similarity_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                const at::Tensor& pairs_in) {
  check_rows("pair_similarity", x_in, y_in);
  check_pairs("pair_similarity", pairs_in, x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), pairs = pairs_in.contiguous();
  const int64_t num_pairs = pairs.size(0);
  at::Tensor out = at::empty({num_pairs}, x.options());
  if (num_pairs == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pair_similarity", [&] {
    pair_dot_forward_kernel<scalar_t><<<blocks_for(num_pairs), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
        pairs.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), num_pairs, x.size(0),
        x.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> pair_similarity_backward_cuda(const at::Tensor& grad_in,
                                                                 const at::Tensor& x_in,
                                                                 const at::Tensor& y_in,
                                                                 const at::Tensor& pairs_in) {
  check_rows("pair_similarity_backward", x_in, y_in);
  check_pairs("pair_similarity_backward", pairs_in, x_in);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == pairs_in.size(0),
              "pair_similarity_backward: grad must be [P] = [", pairs_in.size(0), "], got ",
              grad_in.sizes());
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), y = y_in.contiguous(), pairs = pairs_in.contiguous();
  const at::Tensor grad = grad_in.to(x.scalar_type()).contiguous();
  at::Tensor grad_x = at::zeros(x.sizes(), x.options());
  at::Tensor grad_y = at::zeros(y.sizes(), y.options());
  const int64_t num_pairs = pairs.size(0);
  if (num_pairs == 0 || x.size(1) == 0) return {grad_x, grad_y};
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pair_similarity_backward", [&] {
    pair_dot_backward_kernel<scalar_t><<<blocks_for(num_pairs), kThreads, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
        y.const_data_ptr<scalar_t>(), pairs.const_data_ptr<int64_t>(),
        grad_x.mutable_data_ptr<scalar_t>(), grad_y.mutable_data_ptr<scalar_t>(), num_pairs,
        x.size(0), x.size(1));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {grad_x, grad_y};
}

// Spike trains [T, B, N] -> unit-major rows [N, B, T] in the accumulation dtype.
at::Tensor unit_rows(const char* op, const at::Tensor& spikes, int64_t window) {
  TORCH_CHECK(spikes.is_cuda(), op, ": spikes must be a CUDA tensor, got ", spikes.device());
  TORCH_CHECK(spikes.dim() == 3, op, ": spikes must be [T, B, N], got shape ", spikes.sizes());
  TORCH_CHECK(at::isFloatingType(spikes.scalar_type()), op,
              ": spikes must be a floating-point tensor, got ", spikes.scalar_type());
  TORCH_CHECK(window >= 0 && window < std::max<int64_t>(spikes.size(0), 1), op,
              ": window must be in [0, T - 1] = [0, ", spikes.size(0) - 1, "], got ", window);
  const auto acc = spikes.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return spikes.permute({2, 1, 0}).to(acc).contiguous();
}

at::Tensor pair_ccg_cuda(const at::Tensor& spikes, const at::Tensor& pairs_in, int64_t window) {
  const c10::cuda::CUDAGuard guard(spikes.device());
  const at::Tensor rows = unit_rows("pair_ccg", spikes, window);
  check_pairs("pair_ccg", pairs_in, spikes);
  const at::Tensor pairs = pairs_in.contiguous();
  const int64_t num_pairs = pairs.size(0);
  at::Tensor out = at::empty({num_pairs}, rows.options());
  if (num_pairs == 0) return out;
  const auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "pair_ccg", [&] {
    pair_ccg_forward_kernel<scalar_t><<<blocks_for(num_pairs), kThreads, 0, stream>>>(
        rows.const_data_ptr<scalar_t>(), pairs.const_data_ptr<int64_t>(),
        out.mutable_data_ptr<scalar_t>(), num_pairs, rows.size(0), rows.size(1), rows.size(2),
        window);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

at::Tensor pair_ccg_backward_cuda(const at::Tensor& grad_in, const at::Tensor& spikes,
                                  const at::Tensor& pairs_in, int64_t window) {
  const c10::cuda::CUDAGuard guard(spikes.device());
  const at::Tensor rows = unit_rows("pair_ccg_backward", spikes, window);
  check_pairs("pair_ccg_backward", pairs_in, spikes);
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == pairs_in.size(0),
              "pair_ccg_backward: grad must be [P] = [", pairs_in.size(0), "], got ",
              grad_in.sizes());
  const at::Tensor pairs = pairs_in.contiguous();
  const at::Tensor grad = grad_in.to(rows.scalar_type()).contiguous();
  at::Tensor grad_rows = at::zeros(rows.sizes(), rows.options());
  const int64_t num_pairs = pairs.size(0);
  if (num_pairs > 0 && rows.numel() > 0) {
    const auto stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "pair_ccg_backward", [&] {
      pair_ccg_backward_kernel<scalar_t><<<blocks_for(num_pairs), kThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), rows.const_data_ptr<scalar_t>(),
          pairs.const_data_ptr<int64_t>(), grad_rows.mutable_data_ptr<scalar_t>(), num_pairs,
          rows.size(0), rows.size(1), rows.size(2), window);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  return grad_rows.permute({2, 1, 0}).to(spikes.scalar_type()).contiguous();
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CUDA, m) {
  m.impl("pair_similarity", &pair_similarity_cuda);
  m.impl("pair_similarity_backward", &pair_similarity_backward_cuda);
  m.impl("pair_ccg", &pair_ccg_cuda);
  m.impl("pair_ccg_backward", &pair_ccg_backward_cuda);
}

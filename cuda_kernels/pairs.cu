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
//
// Tiled (pair_similarity_tiled, pair_moments; the plan is tdsnn.ops.tiles.PairTiles): one block
// per tile of at most kMaxTilePairs pairs over at most kMaxTileUnits distinct units. The block
// walks the feature columns in chunks of K (64 bytes of each row), stages the chunk of its units'
// x and y rows in shared memory (rows padded to K + 1 so that threads reading different rows hit
// different banks) and each thread adds the chunk's dot products of its pairs in registers. A
// row is read from global memory once per tile instead of once per pair. pair_moments reduces
// the block's sums (s, s^2, w s) in float64 and adds them with one atomic each. The backwards
// first get each pair's gradient (pair_moments: g0 + 2 g1 s + g2 w from recomputed s), then per
// chunk accumulate the tile's row gradients in shared memory (K lanes per pair, one per column)
// and add them to global memory once per tile. A tile whose offsets are out of order or hold
// more pairs than kMaxTilePairs, or a pair whose slot is outside the tile, gives NaN (no
// gradient) instead of reading out of bounds.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>
#include <optional>

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

// The pair of this warp (one warp per pair): its index p, its units i and j, this thread's lane.
struct WarpPair {
  int64_t p, i, j;
  int lane;
};

// This warp's pair into ``pair``; false when the warp has none, or when the pair has a unit outside
// [0, n) (then lane 0 writes NaN to nan_out[p], where nan_out is given).
template <typename T>
__device__ __forceinline__ bool warp_pair(const int64_t* __restrict__ pairs, int64_t num_pairs,
                                          int64_t n, T* nan_out, WarpPair& pair) {
  pair.p = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  pair.lane = threadIdx.x % 32;
  if (pair.p >= num_pairs) return false;
  pair.i = pairs[2 * pair.p];
  pair.j = pairs[2 * pair.p + 1];
  if (valid_pair(pair.i, pair.j, n)) return true;
  if (nan_out != nullptr && pair.lane == 0) {
    nan_out[pair.p] = std::numeric_limits<T>::quiet_NaN();
  }
  return false;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_dot_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                            const int64_t* __restrict__ pairs, scalar_t* __restrict__ out,
                            int64_t num_pairs, int64_t n, int64_t m) {
  using acc_t = at::opmath_type<scalar_t>;
  WarpPair pair;
  if (!warp_pair(pairs, num_pairs, n, out, pair)) return;
  const scalar_t* xi = x + pair.i * m;
  const scalar_t* yj = y + pair.j * m;
  acc_t sum = 0;
  for (int64_t k = pair.lane; k < m; k += 32) sum += static_cast<acc_t>(xi[k]) * yj[k];
  sum = warp_sum(sum);
  if (pair.lane == 0) out[pair.p] = static_cast<scalar_t>(sum);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    pair_dot_backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                             const scalar_t* __restrict__ y, const int64_t* __restrict__ pairs,
                             scalar_t* __restrict__ grad_x, scalar_t* __restrict__ grad_y,
                             int64_t num_pairs, int64_t n, int64_t m) {
  WarpPair pair;
  if (!warp_pair<scalar_t>(pairs, num_pairs, n, nullptr, pair)) return;
  const scalar_t g = grad[pair.p];
  for (int64_t k = pair.lane; k < m; k += 32) {
    atomicAdd(grad_x + pair.i * m + k, g * y[pair.j * m + k]);
    atomicAdd(grad_y + pair.j * m + k, g * x[pair.i * m + k]);
  }
}

// Rows are unit-major [N, B, T]; lag weight w(tau) = 1 / (B (T - |tau|)).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pair_ccg_forward_kernel(const acc_t* __restrict__ rows, const int64_t* __restrict__ pairs,
                            acc_t* __restrict__ out, int64_t num_pairs, int64_t n, int64_t batch,
                            int64_t steps, int64_t window) {
  WarpPair pair;
  if (!warp_pair(pairs, num_pairs, n, out, pair)) return;
  const int64_t length = batch * steps;
  const acc_t* si = rows + pair.i * length;
  const acc_t* sj = rows + pair.j * length;
  acc_t sum = 0;
  for (int64_t e = pair.lane; e < length; e += 32) {
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
  if (pair.lane == 0) out[pair.p] = sum;
}

template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    pair_ccg_backward_kernel(const acc_t* __restrict__ grad, const acc_t* __restrict__ rows,
                             const int64_t* __restrict__ pairs, acc_t* __restrict__ grad_rows,
                             int64_t num_pairs, int64_t n, int64_t batch, int64_t steps,
                             int64_t window) {
  WarpPair pair;
  if (!warp_pair<acc_t>(pairs, num_pairs, n, nullptr, pair)) return;
  const acc_t g = grad[pair.p];
  const int64_t length = batch * steps;
  const acc_t* si = rows + pair.i * length;
  const acc_t* sj = rows + pair.j * length;
  acc_t* gi = grad_rows + pair.i * length;
  acc_t* gj = grad_rows + pair.j * length;
  // dCCG/dS_i(e) = sum_tau w(tau) S_j(e + tau); dCCG/dS_j(e) = sum_tau w(tau) S_i(e - tau).
  for (int64_t e = pair.lane; e < length; e += 32) {
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

// Launches ``kernel`` with one warp per pair on the current stream.
template <typename... Params, typename... Args>
void launch_per_pair(void (*kernel)(Params...), int64_t num_pairs, Args... args) {
  const auto blocks = static_cast<unsigned>((num_pairs + kWarpsPerBlock - 1) / kWarpsPerBlock);
  kernel<<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pair_similarity", [&] {
    launch_per_pair(pair_dot_forward_kernel<scalar_t>, num_pairs, x.const_data_ptr<scalar_t>(),
                    y.const_data_ptr<scalar_t>(), pairs.const_data_ptr<int64_t>(),
                    out.mutable_data_ptr<scalar_t>(), num_pairs, x.size(0), x.size(1));
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
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "pair_similarity_backward", [&] {
    launch_per_pair(pair_dot_backward_kernel<scalar_t>, num_pairs, grad.const_data_ptr<scalar_t>(),
                    x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
                    pairs.const_data_ptr<int64_t>(), grad_x.mutable_data_ptr<scalar_t>(),
                    grad_y.mutable_data_ptr<scalar_t>(), num_pairs, x.size(0), x.size(1));
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
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "pair_ccg", [&] {
    launch_per_pair(pair_ccg_forward_kernel<scalar_t>, num_pairs, rows.const_data_ptr<scalar_t>(),
                    pairs.const_data_ptr<int64_t>(), out.mutable_data_ptr<scalar_t>(), num_pairs,
                    rows.size(0), rows.size(1), rows.size(2), window);
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
    AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "pair_ccg_backward", [&] {
      launch_per_pair(pair_ccg_backward_kernel<scalar_t>, num_pairs,
                      grad.const_data_ptr<scalar_t>(), rows.const_data_ptr<scalar_t>(),
                      pairs.const_data_ptr<int64_t>(), grad_rows.mutable_data_ptr<scalar_t>(),
                      num_pairs, rows.size(0), rows.size(1), rows.size(2), window);
    });
  }
  return grad_rows.permute({2, 1, 0}).to(spikes.scalar_type()).contiguous();
}

// ----------------------------------------------------------------------------------- tiled

constexpr int kMaxTileUnits = 128;   // tdsnn.ops.tiles.MAX_TILE_UNITS
constexpr int kMaxTilePairs = 1024;  // tdsnn.ops.tiles.MAX_TILE_PAIRS
constexpr int kTileThreads = 256;
constexpr int kPairsPerThread = kMaxTilePairs / kTileThreads;

// Columns per chunk: 64 bytes of a row (16 float, 8 double).
template <typename scalar_t>
constexpr int tile_columns() {
  return static_cast<int>(64 / sizeof(scalar_t));
}

struct TileRange {
  int64_t begin = 0, count = 0;
  bool fits = false;  // offsets in order, within [0, num_pairs], at most kMaxTilePairs
};

__device__ __forceinline__ TileRange tile_range(const int64_t* offsets, int64_t num_pairs) {
  TileRange r;
  r.begin = offsets[blockIdx.x];
  const int64_t end = offsets[blockIdx.x + 1];
  r.fits = r.begin >= 0 && end >= r.begin && end <= num_pairs && end - r.begin <= kMaxTilePairs;
  r.count = r.fits ? end - r.begin : 0;
  return r;
}

// Stage columns [c0, c0 + K) of the tile's rows of `rows` [N, M] in `staged` [width, K + 1].
template <typename scalar_t, int K>
__device__ __forceinline__ void stage_rows(scalar_t* staged, const scalar_t* __restrict__ rows,
                                           const int64_t* __restrict__ units, int width,
                                           int64_t n, int64_t m, int64_t c0) {
  for (int e = threadIdx.x; e < width * K; e += blockDim.x) {
    const int u = e / K, k = e - u * K;
    const int64_t unit = units[u], col = c0 + k;
    const bool ok = unit >= 0 && unit < n && col < m;
    staged[u * (K + 1) + k] = ok ? rows[unit * m + col] : scalar_t(0);
  }
}

// This thread's pairs' slots (a, b), -1 where the thread has no pair or the slot is invalid.
__device__ __forceinline__ void tile_slots(const int32_t* __restrict__ local, TileRange r,
                                           int width, int (&a)[kPairsPerThread],
                                           int (&b)[kPairsPerThread],
                                           bool (&bad)[kPairsPerThread]) {
#pragma unroll
  for (int t = 0; t < kPairsPerThread; ++t) {
    const int64_t q = threadIdx.x + static_cast<int64_t>(t) * kTileThreads;
    a[t] = b[t] = -1;
    bad[t] = false;
    if (q >= r.count) continue;
    const int sa = local[2 * (r.begin + q)], sb = local[2 * (r.begin + q) + 1];
    bad[t] = sa < 0 || sa >= width || sb < 0 || sb >= width;
    if (!bad[t]) a[t] = sa, b[t] = sb;
  }
}

// Dot products s of this thread's pairs over all M columns, chunk by chunk through shared memory.
template <typename scalar_t, int K>
__device__ void tile_dots(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                          const int64_t* __restrict__ units, int width, int64_t n, int64_t m,
                          scalar_t* xs, scalar_t* ys, const int (&a)[kPairsPerThread],
                          const int (&b)[kPairsPerThread],
                          at::opmath_type<scalar_t> (&acc)[kPairsPerThread]) {
  using acc_t = at::opmath_type<scalar_t>;
#pragma unroll
  for (int t = 0; t < kPairsPerThread; ++t) acc[t] = acc_t(0);
  for (int64_t c0 = 0; c0 < m; c0 += K) {
    __syncthreads();  // the previous chunk is read
    stage_rows<scalar_t, K>(xs, x, units, width, n, m, c0);
    stage_rows<scalar_t, K>(ys, y, units, width, n, m, c0);
    __syncthreads();
#pragma unroll
    for (int t = 0; t < kPairsPerThread; ++t) {
      if (a[t] < 0) continue;
      const scalar_t* xa = xs + a[t] * (K + 1);
      const scalar_t* yb = ys + b[t] * (K + 1);
      acc_t s = 0;
#pragma unroll
      for (int k = 0; k < K; ++k) s += static_cast<acc_t>(xa[k]) * static_cast<acc_t>(yb[k]);
      acc[t] += s;
    }
  }
}

// The dot products ``acc`` of this thread's pairs of the tile (tile_slots, tile_dots) through the
// x and y rows at the start of the dynamic shared memory; bad[t]: the pair's slot is outside the
// tile.
template <typename scalar_t>
__device__ __forceinline__ void tile_pair_dots(const scalar_t* __restrict__ x,
                                               const scalar_t* __restrict__ y,
                                               const int64_t* __restrict__ units,
                                               const int32_t* __restrict__ local, TileRange r,
                                               int64_t n, int64_t m, int width,
                                               bool (&bad)[kPairsPerThread],
                                               at::opmath_type<scalar_t> (&acc)[kPairsPerThread]) {
  constexpr int K = tile_columns<scalar_t>();
  extern __shared__ __align__(16) unsigned char tile_smem[];
  scalar_t* xs = reinterpret_cast<scalar_t*>(tile_smem);
  const int64_t* tile_units = units + static_cast<int64_t>(blockIdx.x) * width;
  int a[kPairsPerThread], b[kPairsPerThread];
  tile_slots(local, r, width, a, b, bad);
  tile_dots<scalar_t, K>(x, y, tile_units, width, n, m, xs, xs + width * (K + 1), a, b, acc);
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    tile_similarity_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                           const int64_t* __restrict__ units, const int32_t* __restrict__ local,
                           const int64_t* __restrict__ offsets, scalar_t* __restrict__ out,
                           int64_t num_pairs, int64_t n, int64_t m, int width) {
  const TileRange r = tile_range(offsets, num_pairs);
  if (!r.fits) return;  // block-uniform; the unwritten pairs are NaN from the host's fill
  bool bad[kPairsPerThread];
  at::opmath_type<scalar_t> acc[kPairsPerThread];
  tile_pair_dots(x, y, units, local, r, n, m, width, bad, acc);
#pragma unroll
  for (int t = 0; t < kPairsPerThread; ++t) {
    const int64_t q = threadIdx.x + static_cast<int64_t>(t) * kTileThreads;
    if (q >= r.count) continue;
    out[r.begin + q] = bad[t] ? std::numeric_limits<scalar_t>::quiet_NaN()
                              : static_cast<scalar_t>(acc[t]);
  }
}

__device__ __forceinline__ double block_sum(double v, double* scratch) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();  // scratch is free
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  double total = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kTileThreads / 32; ++w) total += scratch[w];
  return total;  // valid in thread 0
}

template <typename scalar_t>
__global__ void __launch_bounds__(kTileThreads)
    tile_moments_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                        const int64_t* __restrict__ units, const int32_t* __restrict__ local,
                        const int64_t* __restrict__ offsets, const scalar_t* __restrict__ weights,
                        double* __restrict__ moments, int64_t num_pairs, int64_t n, int64_t m,
                        int width) {
  __shared__ double scratch[kTileThreads / 32];
  const TileRange r = tile_range(offsets, num_pairs);
  if (!r.fits) {
    if (threadIdx.x == 0)
      for (int i = 0; i < 3; ++i) atomicAdd(moments + i, std::numeric_limits<double>::quiet_NaN());
    return;
  }
  bool bad[kPairsPerThread];
  at::opmath_type<scalar_t> acc[kPairsPerThread];
  tile_pair_dots(x, y, units, local, r, n, m, width, bad, acc);
  double sums[3] = {0, 0, 0};
#pragma unroll
  for (int t = 0; t < kPairsPerThread; ++t) {
    const int64_t q = threadIdx.x + static_cast<int64_t>(t) * kTileThreads;
    if (q >= r.count) continue;
    const double s = bad[t] ? std::numeric_limits<double>::quiet_NaN() : acc[t];
    sums[0] += s;
    sums[1] += s * s;
    if (weights != nullptr) sums[2] += static_cast<double>(weights[r.begin + q]) * s;
  }
  for (int i = 0; i < 3; ++i) {
    const double total = block_sum(sums[i], scratch);
    if (threadIdx.x == 0) atomicAdd(moments + i, total);
  }
}

// Backward of a tile: pair gradients gp [count] are in shared memory; per chunk, accumulate the
// row gradients of the tile's units in shared memory and add them to grad_x, grad_y.
template <typename scalar_t, int K>
__device__ void tile_scatter(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                             const int64_t* __restrict__ units, const int32_t* __restrict__ local,
                             TileRange r, int width, int64_t n, int64_t m, scalar_t* xs,
                             scalar_t* ys, scalar_t* gxs, scalar_t* gys,
                             const at::opmath_type<scalar_t>* gp, scalar_t* __restrict__ grad_x,
                             scalar_t* __restrict__ grad_y) {
  constexpr int kGroups = kTileThreads / K;  // K lanes per pair, one per column
  const int group = threadIdx.x / K, k = threadIdx.x % K;
  for (int64_t c0 = 0; c0 < m; c0 += K) {
    __syncthreads();  // the previous chunk is flushed
    stage_rows<scalar_t, K>(xs, x, units, width, n, m, c0);
    stage_rows<scalar_t, K>(ys, y, units, width, n, m, c0);
    for (int e = threadIdx.x; e < width * (K + 1); e += blockDim.x) gxs[e] = gys[e] = 0;
    __syncthreads();
    for (int64_t q = group; q < r.count; q += kGroups) {
      const int a = local[2 * (r.begin + q)], b = local[2 * (r.begin + q) + 1];
      if (a < 0 || a >= width || b < 0 || b >= width) continue;
      const scalar_t g = static_cast<scalar_t>(gp[q]);
      atomicAdd(gxs + a * (K + 1) + k, g * ys[b * (K + 1) + k]);
      atomicAdd(gys + b * (K + 1) + k, g * xs[a * (K + 1) + k]);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < width * K; e += blockDim.x) {
      const int u = e / K, kk = e - u * K;
      const int64_t unit = units[u], col = c0 + kk;
      if (unit < 0 || unit >= n || col >= m) continue;
      const scalar_t gx = gxs[u * (K + 1) + kk], gy = gys[u * (K + 1) + kk];
      if (gx != scalar_t(0)) atomicAdd(grad_x + unit * m + col, gx);
      if (gy != scalar_t(0)) atomicAdd(grad_y + unit * m + col, gy);
    }
  }
}

// kMoments: grad is the [3] float64 gradient of the moments and weights may be null; else grad is
// the [P] gradient of the similarities (tile order).
template <typename scalar_t, bool kMoments>
__global__ void __launch_bounds__(kTileThreads)
    tile_backward_kernel(const void* __restrict__ grad_in, const scalar_t* __restrict__ x,
                         const scalar_t* __restrict__ y, const int64_t* __restrict__ units,
                         const int32_t* __restrict__ local, const int64_t* __restrict__ offsets,
                         const scalar_t* __restrict__ weights, scalar_t* __restrict__ grad_x,
                         scalar_t* __restrict__ grad_y, int64_t num_pairs, int64_t n, int64_t m,
                         int width) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int K = tile_columns<scalar_t>();
  extern __shared__ __align__(16) unsigned char tile_smem[];
  scalar_t* xs = reinterpret_cast<scalar_t*>(tile_smem);
  scalar_t* ys = xs + width * (K + 1);
  scalar_t* gxs = ys + width * (K + 1);
  scalar_t* gys = gxs + width * (K + 1);
  acc_t* gp = reinterpret_cast<acc_t*>(gys + width * (K + 1));
  const TileRange r = tile_range(offsets, num_pairs);
  if (!r.fits) return;
  const int64_t* tile_units = units + static_cast<int64_t>(blockIdx.x) * width;
  int a[kPairsPerThread], b[kPairsPerThread];
  bool bad[kPairsPerThread];
  tile_slots(local, r, width, a, b, bad);
  if constexpr (kMoments) {
    const double* g = static_cast<const double*>(grad_in);
    acc_t acc[kPairsPerThread];
    tile_dots<scalar_t, K>(x, y, tile_units, width, n, m, xs, ys, a, b, acc);
#pragma unroll
    for (int t = 0; t < kPairsPerThread; ++t) {
      const int64_t q = threadIdx.x + static_cast<int64_t>(t) * kTileThreads;
      if (q >= r.count) continue;
      const double w = weights != nullptr ? static_cast<double>(weights[r.begin + q]) : 0.0;
      gp[q] = a[t] < 0 ? acc_t(0) : static_cast<acc_t>(g[0] + 2.0 * g[1] * acc[t] + g[2] * w);
    }
  } else {
    const scalar_t* g = static_cast<const scalar_t*>(grad_in);
#pragma unroll
    for (int t = 0; t < kPairsPerThread; ++t) {
      const int64_t q = threadIdx.x + static_cast<int64_t>(t) * kTileThreads;
      if (q < r.count) gp[q] = a[t] < 0 ? acc_t(0) : static_cast<acc_t>(g[r.begin + q]);
    }
  }
  tile_scatter<scalar_t, K>(x, y, tile_units, local, r, width, n, m, xs, ys, gxs, gys, gp,
                            grad_x, grad_y);
}

void check_tiles(const char* op, const at::Tensor& x, const at::Tensor& units,
                 const at::Tensor& local, const at::Tensor& offsets) {
  TORCH_CHECK(units.dim() == 2 && units.scalar_type() == at::kLong, op,
              ": units must be a [G, U] int64 tensor, got ", units.scalar_type(), " of shape ",
              units.sizes());
  TORCH_CHECK(units.size(1) >= 1 && units.size(1) <= kMaxTileUnits, op,
              ": a tile reads 1 to ", kMaxTileUnits, " units, got units of width ",
              units.size(1));
  TORCH_CHECK(local.dim() == 2 && local.size(1) == 2 && local.scalar_type() == at::kInt, op,
              ": local must be a [P, 2] int32 tensor, got ", local.scalar_type(), " of shape ",
              local.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.scalar_type() == at::kLong &&
                  offsets.size(0) == units.size(0) + 1,
              op, ": offsets must be a [G + 1] = [", units.size(0) + 1, "] int64 tensor, got ",
              offsets.scalar_type(), " of shape ", offsets.sizes());
  TORCH_CHECK(units.size(0) > 0 || local.size(0) == 0, op, ": ", local.size(0),
              " pairs but no tiles");
  for (const at::Tensor* t : {&units, &local, &offsets})
    TORCH_CHECK(t->device() == x.device(), op, ": the tile plan is on ", t->device(),
                " but the rows are on ", x.device());
}

template <typename scalar_t>
size_t tile_smem_bytes(int width, bool backward) {
  constexpr int K = tile_columns<scalar_t>();
  const size_t rows = static_cast<size_t>(width) * (K + 1) * sizeof(scalar_t);
  if (!backward) return 2 * rows;
  return 4 * rows + kMaxTilePairs * sizeof(at::opmath_type<scalar_t>);
}

struct TileLaunch {
  at::Tensor x, y, units, local, offsets;
  int64_t tiles, pairs, n, m;
  int width;
};

TileLaunch tile_launch(const char* op, const at::Tensor& x, const at::Tensor& y,
                       const at::Tensor& units, const at::Tensor& local,
                       const at::Tensor& offsets) {
  check_rows(op, x, y);
  check_tiles(op, x, units, local, offsets);
  TileLaunch l{x.contiguous(), y.contiguous(), units.contiguous(), local.contiguous(),
               offsets.contiguous(), units.size(0), local.size(0), x.size(0), x.size(1),
               static_cast<int>(units.size(1))};
  return l;
}

// Launches ``kernel`` with one block per tile of ``l`` on the current stream, with the shared
// memory of its tile rows (and, for a backward, of their gradients and the pair gradients).
template <typename scalar_t, typename... Params, typename... Args>
void launch_per_tile(void (*kernel)(Params...), const TileLaunch& l, bool backward,
                     Args... args) {
  const size_t smem = tile_smem_bytes<scalar_t>(l.width, backward);
  kernel<<<l.tiles, kTileThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(args...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor pair_similarity_tiled_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                                      const at::Tensor& units, const at::Tensor& local,
                                      const at::Tensor& offsets) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const TileLaunch l = tile_launch("pair_similarity_tiled", x_in, y_in, units, local, offsets);
  // NaN marks pairs of a tile the kernel rejects (it writes every pair of the others)
  at::Tensor out = at::full({l.pairs}, std::numeric_limits<double>::quiet_NaN(), l.x.options());
  if (l.pairs == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(l.x.scalar_type(), "pair_similarity_tiled", [&] {
    launch_per_tile<scalar_t>(tile_similarity_kernel<scalar_t>, l, false,
                              l.x.const_data_ptr<scalar_t>(), l.y.const_data_ptr<scalar_t>(),
                              l.units.const_data_ptr<int64_t>(), l.local.const_data_ptr<int32_t>(),
                              l.offsets.const_data_ptr<int64_t>(),
                              out.mutable_data_ptr<scalar_t>(), l.pairs, l.n, l.m, l.width);
  });
  return out;
}

// Per-pair weights [P] of pair_moments in x's dtype, contiguous; undefined when absent.
at::Tensor pair_weights(const char* op, const std::optional<at::Tensor>& weights,
                        const TileLaunch& l) {
  if (!weights.has_value()) return at::Tensor();
  const at::Tensor& w = *weights;
  TORCH_CHECK(w.dim() == 1 && w.size(0) == l.pairs, op, ": weights must be [P] = [", l.pairs,
              "], got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == l.x.scalar_type(), op, ": weights must be ",
              l.x.scalar_type(), ", got ", w.scalar_type());
  TORCH_CHECK(w.device() == l.x.device(), op, ": weights is on ", w.device(),
              " but the rows are on ", l.x.device());
  return w.contiguous();
}

// The backwards of pair_similarity_tiled (kMoments false: grad [P] of the similarities) and
// pair_moments (kMoments true: grad [3] of the moments, recomputing each similarity).
template <bool kMoments>
std::tuple<at::Tensor, at::Tensor> tile_backward(const char* op, const at::Tensor& grad_in,
                                                 const at::Tensor& x_in, const at::Tensor& y_in,
                                                 const at::Tensor& units,
                                                 const at::Tensor& local,
                                                 const at::Tensor& offsets,
                                                 const std::optional<at::Tensor>& w_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const TileLaunch l = tile_launch(op, x_in, y_in, units, local, offsets);
  const int64_t expected = kMoments ? 3 : l.pairs;
  TORCH_CHECK(grad_in.dim() == 1 && grad_in.size(0) == expected, op, ": grad must be [",
              kMoments ? "3" : "P", "] = [", expected, "], got ", grad_in.sizes());
  TORCH_CHECK(grad_in.device() == l.x.device(), op, ": grad is on ", grad_in.device(),
              " but the rows are on ", l.x.device());
  const at::Tensor weights = pair_weights(op, w_in, l);
  const at::Tensor grad = grad_in.to(kMoments ? at::kDouble : l.x.scalar_type()).contiguous();
  at::Tensor grad_x = at::zeros(l.x.sizes(), l.x.options());
  at::Tensor grad_y = at::zeros(l.y.sizes(), l.y.options());
  if (l.pairs == 0 || l.m == 0) return {grad_x, grad_y};
  AT_DISPATCH_FLOATING_TYPES(l.x.scalar_type(), "pair_tiles_backward", [&] {
    launch_per_tile<scalar_t>(
        tile_backward_kernel<scalar_t, kMoments>, l, true, grad.const_data_ptr(),
        l.x.const_data_ptr<scalar_t>(), l.y.const_data_ptr<scalar_t>(),
        l.units.const_data_ptr<int64_t>(), l.local.const_data_ptr<int32_t>(),
        l.offsets.const_data_ptr<int64_t>(),
        weights.defined() ? weights.const_data_ptr<scalar_t>() : nullptr,
        grad_x.mutable_data_ptr<scalar_t>(), grad_y.mutable_data_ptr<scalar_t>(), l.pairs, l.n,
        l.m, l.width);
  });
  return {grad_x, grad_y};
}

std::tuple<at::Tensor, at::Tensor> pair_similarity_tiled_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& units,
    const at::Tensor& local, const at::Tensor& offsets) {
  return tile_backward<false>("pair_similarity_tiled_backward", grad, x, y, units, local,
                              offsets, std::nullopt);
}

at::Tensor pair_moments_cuda(const at::Tensor& x_in, const at::Tensor& y_in,
                             const at::Tensor& units, const at::Tensor& local,
                             const at::Tensor& offsets, const std::optional<at::Tensor>& w_in) {
  const c10::cuda::CUDAGuard guard(x_in.device());
  const TileLaunch l = tile_launch("pair_moments", x_in, y_in, units, local, offsets);
  const at::Tensor weights = pair_weights("pair_moments", w_in, l);
  at::Tensor moments = at::zeros({3}, l.x.options().dtype(at::kDouble));
  if (l.pairs == 0) return moments;
  AT_DISPATCH_FLOATING_TYPES(l.x.scalar_type(), "pair_moments", [&] {
    launch_per_tile<scalar_t>(tile_moments_kernel<scalar_t>, l, false,
                              l.x.const_data_ptr<scalar_t>(), l.y.const_data_ptr<scalar_t>(),
                              l.units.const_data_ptr<int64_t>(), l.local.const_data_ptr<int32_t>(),
                              l.offsets.const_data_ptr<int64_t>(),
                              weights.defined() ? weights.const_data_ptr<scalar_t>() : nullptr,
                              moments.mutable_data_ptr<double>(), l.pairs, l.n, l.m, l.width);
  });
  return moments;
}

std::tuple<at::Tensor, at::Tensor> pair_moments_backward_cuda(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& y, const at::Tensor& units,
    const at::Tensor& local, const at::Tensor& offsets, const std::optional<at::Tensor>& w) {
  return tile_backward<true>("pair_moments_backward", grad, x, y, units, local, offsets, w);
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CUDA, m) {
  m.impl("pair_similarity", &pair_similarity_cuda);
  m.impl("pair_similarity_backward", &pair_similarity_backward_cuda);
  m.impl("pair_similarity_tiled", &pair_similarity_tiled_cuda);
  m.impl("pair_similarity_tiled_backward", &pair_similarity_tiled_backward_cuda);
  m.impl("pair_moments", &pair_moments_cuda);
  m.impl("pair_moments_backward", &pair_moments_backward_cuda);
  m.impl("pair_ccg", &pair_ccg_cuda);
  m.impl("pair_ccg_backward", &pair_ccg_backward_cuda);
}

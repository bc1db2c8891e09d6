// Fused batch-norm apply (+ shortcut) + multi-step LIF on the CPU: z = y·scale[c] + shift[c]
// (+ shortcut), then the LIF over all T steps of z, one pass over y. The backward recomputes z
// and the membrane from the saved y (neither is stored), runs the LIF's reverse-time recurrence
// and, in training, the batch-norm gradient through the batch statistics (a second pass, after
// the per-channel sums). Parallel over neurons with at::parallel_for (OpenMP), vectorised by the
// compiler over a block of neurons whose state stays in L1. The LIF's arithmetic: lif_math.h;
// equations: tdsnn/ops/bn_lif.py.
//
// Layout: y time-major dense (contiguous or channels-last) without a copy, the outputs with y's
// strides, the shortcut and incoming gradients brought to them (lif_common.h, bn_lif_common.h).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>
#include <vector>

#include "bn_lif_common.h"
#include "lif_common.h"
#include "lif_math.h"

namespace {

using namespace tdsnn_lif;
using namespace tdsnn_bn_lif;

constexpr int64_t kBlock = 256;   // neurons whose state a thread keeps while it walks over T
constexpr int64_t kGrain = 4096;  // neurons per parallel task, at least

// z of the neurons first..first+len at step t into ``z`` (batch-norm apply + shortcut).
template <typename scalar_t, typename acc_t>
inline void block_input(const View<scalar_t, acc_t>& in, int64_t t, int64_t first, int64_t len,
                        const acc_t* __restrict__ scale, const acc_t* __restrict__ shift,
                        acc_t* __restrict__ z) {
  const int64_t offset = t * in.n + first;
  const scalar_t* __restrict__ yt = in.y + offset;
  for (int64_t k = 0; k < len; ++k) z[k] = static_cast<acc_t>(yt[k]) * scale[k] + shift[k];
  if (in.shortcut) {
    const scalar_t* __restrict__ sc = in.shortcut + offset;
    for (int64_t k = 0; k < len; ++k) z[k] += static_cast<acc_t>(sc[k]);
  }
}

// Forward over T of the neurons first..first+len: spikes, and H when ``membrane``.
template <typename scalar_t, typename acc_t, bool kDecayInput, bool kSoft>
void forward_block(const View<scalar_t, acc_t>& in, scalar_t* __restrict__ spikes,
                   acc_t* __restrict__ membrane, int64_t first, int64_t len,
                   const LIFConst<acc_t>& constants) {
  const LIFConst<acc_t> c = constants;  // a local copy: no store in the loops can alias it
  acc_t v[kBlock], scale[kBlock], shift[kBlock], z[kBlock];
  int64_t ch[kBlock];
  in.coefficients(first, len, ch, scale, shift);
  std::fill(v, v + len, c.rest);
  for (int64_t t = 0; t < in.steps; ++t) {
    const int64_t offset = t * in.n + first;
    block_input(in, t, first, len, scale, shift, z);
    scalar_t* __restrict__ st = spikes + offset;
    for (int64_t k = 0; k < len; ++k) {
      const acc_t h = step(z[k], v[k], c, kDecayInput, kSoft);
      st[k] = fires(h, c) ? scalar_t(1) : scalar_t(0);
      z[k] = h;
    }
    if (membrane) std::copy(z, z + len, membrane + offset);
  }
}

// Runs ``block(first, len)`` over the n neurons in blocks of at most kBlock, in parallel.
template <typename F>
void for_each_block(int64_t n, const F& block) {
  at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t first = begin; first < end; first += kBlock) {
      block(first, std::min(kBlock, end - first));
    }
  });
}

// The outputs of the backward's first pass, and the per-thread channel sums it accumulates.
template <typename scalar_t, typename acc_t>
struct BackwardOut {
  const scalar_t* grad_spikes;  // may be null
  const acc_t* grad_mem;        // may be null
  acc_t* grad_z;                // training: dL/dz, for the second pass (else null); may be
                                // grad_shortcut's or grad_y's storage (CpuKernels::backward)
  scalar_t* grad_y;             // eval: dL/dy = scale·dL/dz (else null)
  scalar_t* grad_shortcut;      // dL/dz, when there is a shortcut (else null)
  double* sums;                 // [threads, 2, C]: sum dL/dz, sum dL/dz·x_hat
};

// First pass of the backward for the neurons first..first+len: recompute H over T into
// ``h`` [T, len], then the reverse-time recurrence of the LIF; dL/dz to the outputs and its
// sums (plain and times the normalised input x_hat) per channel. The arithmetic runs on local
// arrays, the loads and stores in loops of their own, so that every loop vectorises.
template <typename scalar_t, typename acc_t, Surrogate kSurrogate>
void backward_block(const View<scalar_t, acc_t>& in, const BackwardOut<scalar_t, acc_t>& out,
                    acc_t* __restrict__ h, int64_t first, int64_t len,
                    const LIFConst<acc_t>& constants, bool detach_reset, acc_t alpha) {
  const LIFConst<acc_t> c = constants;  // a local copy: no store in the loops can alias it
  acc_t v[kBlock], scale[kBlock], shift[kBlock], mu[kBlock], is[kBlock], z[kBlock];
  int64_t ch[kBlock];
  in.coefficients(first, len, ch, scale, shift, mu, is);
  std::fill(v, v + len, c.rest);
  for (int64_t t = 0; t < in.steps; ++t) {
    block_input(in, t, first, len, scale, shift, z);
    acc_t* __restrict__ ht = h + t * len;
    for (int64_t k = 0; k < len; ++k) ht[k] = step(z[k], v[k], c);  // the forward's H
  }
  // grad_h[t+1]; dL/dS[t]; dL/dz[t]; the sums over T
  acc_t later[kBlock], gs[kBlock], gz[kBlock], sum_g[kBlock], sum_gx[kBlock];
  std::fill(later, later + len, acc_t(0));
  std::fill(sum_g, sum_g + len, acc_t(0));
  std::fill(sum_gx, sum_gx + len, acc_t(0));
  std::fill(gs, gs + len, acc_t(0));
  const acc_t out_scale = input_grad_scale(c);  // dL/dz = dL/dH · out_scale
  for (int64_t t = in.steps - 1; t >= 0; --t) {
    const int64_t offset = t * in.n + first;
    const acc_t* __restrict__ ht = h + t * len;
    const scalar_t* __restrict__ yt = in.y + offset;
    if (out.grad_spikes) {
      const scalar_t* __restrict__ src = out.grad_spikes + offset;
      for (int64_t k = 0; k < len; ++k) gs[k] = static_cast<acc_t>(src[k]);
    }
    if (out.grad_mem) {
      std::copy(out.grad_mem + offset, out.grad_mem + offset + len, gz);
    } else {
      std::fill(gz, gz + len, acc_t(0));
    }
    for (int64_t k = 0; k < len; ++k) {
      const acc_t gh = charged_grad(charged(ht[k], false, c), gs[k], gz[k], later[k], c,
                                    kSurrogate, detach_reset, alpha);
      later[k] = gh;
      const acc_t g = gh * out_scale;
      const acc_t x_hat = (static_cast<acc_t>(yt[k]) - mu[k]) * is[k];
      sum_g[k] += g;
      sum_gx[k] += g * x_hat;
      gz[k] = g;
    }
    if (out.grad_z) std::copy(gz, gz + len, out.grad_z + offset);
    if (out.grad_y) {
      scalar_t* __restrict__ dst = out.grad_y + offset;
      for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(gz[k] * scale[k]);
    }
    if (out.grad_shortcut && static_cast<void*>(out.grad_shortcut) != out.grad_z) {
      scalar_t* __restrict__ dst = out.grad_shortcut + offset;
      for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(gz[k]);
    }
  }
  double* sums = out.sums + 2 * in.channels * at::get_thread_num();
  for (int64_t k = 0; k < len; ++k) {
    sums[ch[k]] += sum_g[k];
    sums[in.channels + ch[k]] += sum_gx[k];
  }
}

// Second pass (training): dL/dy = scale·(dL/dz - mean(dL/dz) - x_hat·mean(dL/dz·x_hat)), the
// means over the M = T·B·space elements of each channel. ``grad_z`` may be ``grad_y`` (in place).
template <typename scalar_t, typename acc_t>
void batch_stat_block(const View<scalar_t, acc_t>& in, const acc_t* grad_z, const acc_t* mean_g,
                      const acc_t* mean_gx, scalar_t* grad_y, int64_t first, int64_t len) {
  acc_t scale[kBlock], shift[kBlock], mu[kBlock], is[kBlock], mg[kBlock], mgx[kBlock];
  int64_t ch[kBlock];
  in.coefficients(first, len, ch, scale, shift, mu, is);
  for (int64_t k = 0; k < len; ++k) {
    mg[k] = mean_g[ch[k]];
    mgx[k] = mean_gx[ch[k]];
  }
  for (int64_t t = 0; t < in.steps; ++t) {
    const int64_t offset = t * in.n + first;
    const scalar_t* __restrict__ yt = in.y + offset;
    const acc_t* gz = grad_z + offset;  // not __restrict__: it may be gy
    scalar_t* gy = grad_y + offset;
    for (int64_t k = 0; k < len; ++k) {
      const acc_t x_hat = (static_cast<acc_t>(yt[k]) - mu[k]) * is[k];
      gy[k] = static_cast<scalar_t>(scale[k] * (gz[k] - mg[k] - x_hat * mgx[k]));
    }
  }
}

template <typename scalar_t, typename acc_t>
void backward_dispatch(Surrogate surrogate, const View<scalar_t, acc_t>& in,
                       const BackwardOut<scalar_t, acc_t>& out, const LIFConst<acc_t>& c,
                       bool detach_reset, acc_t alpha) {
  at::parallel_for(0, in.n, kGrain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> h(static_cast<size_t>(in.steps * std::min(kBlock, end - begin)));
    for (int64_t first = begin; first < end; first += kBlock) {
      const int64_t len = std::min(kBlock, end - first);
      switch (surrogate) {
        case Surrogate::ATan:
          backward_block<scalar_t, acc_t, Surrogate::ATan>(in, out, h.data(), first, len, c,
                                                           detach_reset, alpha);
          break;
        case Surrogate::Sigmoid:
          backward_block<scalar_t, acc_t, Surrogate::Sigmoid>(in, out, h.data(), first, len, c,
                                                              detach_reset, alpha);
          break;
        case Surrogate::PiecewiseQuadratic:
          backward_block<scalar_t, acc_t, Surrogate::PiecewiseQuadratic>(
              in, out, h.data(), first, len, c, detach_reset, alpha);
          break;
        default:
          backward_block<scalar_t, acc_t, Surrogate::FastSigmoid>(in, out, h.data(), first, len,
                                                                  c, detach_reset, alpha);
      }
    }
  });
}

// The loops behind bn_lif_common.h's bn_lif_forward_op / bn_lif_backward_op.
struct CpuKernels {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  template <typename scalar_t, typename acc_t>
  static void forward(const View<scalar_t, acc_t>& in, scalar_t* spikes, acc_t* membrane,
                      const LIFConst<acc_t>& c) {
    for_each_block(in.n, [&](int64_t first, int64_t len) {
      if (c.decay_input && c.soft_reset) {
        forward_block<scalar_t, acc_t, true, true>(in, spikes, membrane, first, len, c);
      } else if (c.decay_input) {
        forward_block<scalar_t, acc_t, true, false>(in, spikes, membrane, first, len, c);
      } else if (c.soft_reset) {
        forward_block<scalar_t, acc_t, false, true>(in, spikes, membrane, first, len, c);
      } else {
        forward_block<scalar_t, acc_t, false, false>(in, spikes, membrane, first, len, c);
      }
    });
  }

  // The first pass sums per thread (and keeps dL/dz in training, writes scale·dL/dz to grad_y in
  // eval); the second pass (training) brings dL/dz through the batch statistics. dL/dz is kept
  // in an output where one has the arithmetic type (float32, float64): the shortcut's gradient,
  // which is dL/dz, else grad_y, overwritten in place; else in a scratch tensor. (A fresh
  // tensor of V1's size costs page faults of the order of the kernel's own time.)
  template <typename scalar_t, typename acc_t>
  static at::Tensor backward(const View<scalar_t, acc_t>& in,
                             const BackwardArgs<scalar_t, acc_t>& a, const at::Tensor& y) {
    const at::ScalarType acc_dtype = param_dtype(y.scalar_type());
    at::Tensor sums =
        at::zeros({at::get_num_threads(), 2, in.channels}, y.options().dtype(at::kDouble));
    acc_t* grad_z = nullptr;
    at::Tensor scratch;
    if (a.training) {
      if constexpr (std::is_same_v<scalar_t, acc_t>) {
        grad_z = a.grad_shortcut ? a.grad_shortcut : a.grad_y;
      } else {
        scratch = at::empty_like(y, y.options().dtype(acc_dtype));
        grad_z = scratch.mutable_data_ptr<acc_t>();
      }
    }
    const BackwardOut<scalar_t, acc_t> out{a.grad_spikes,
                                           a.grad_mem,
                                           grad_z,
                                           a.training ? nullptr : a.grad_y,
                                           a.grad_shortcut,
                                           sums.mutable_data_ptr<double>()};
    backward_dispatch(a.surrogate, in, out, a.c, a.detach_reset, a.alpha);
    if (!a.training) return sums.sum(0);
    const at::Tensor totals = sums.sum(0).to(acc_dtype);  // [2, C]
    const at::Tensor means = totals.div(static_cast<double>(y.numel() / in.channels));
    const acc_t* mg = means.const_data_ptr<acc_t>();
    for_each_block(in.n, [&](int64_t first, int64_t len) {
      batch_stat_block<scalar_t, acc_t>(in, grad_z, mg, mg + in.channels, a.grad_y, first, len);
    });
    return sums.sum(0);
  }
};

// Batch statistics of y [T, B, C, *] over every dimension but the channel: (mean, biased
// variance) [C] in float32 (float64 for float64 y), accumulated in float64 in one pass.
std::tuple<at::Tensor, at::Tensor> bn_lif_stats_cpu(const at::Tensor& y_in) {
  TORCH_CHECK(y_in.device().is_cpu(), "bn_lif_stats: y must be a CPU tensor, got ",
              y_in.device());
  TORCH_CHECK(y_in.dim() >= 3, "bn_lif_stats: y must be [T, B, C, *], got ", y_in.dim(),
              " dimension(s)");
  TORCH_CHECK(at::isFloatingType(y_in.scalar_type()),
              "bn_lif_stats: y must be float16, bfloat16, float32 or float64, got ",
              y_in.scalar_type());
  const at::Tensor y = time_major(y_in);
  const int64_t channels = y.size(2);
  const int64_t count = channels == 0 ? 0 : y.numel() / channels;
  TORCH_CHECK(count > 0, "bn_lif_stats: y has no values per channel, shape ", y.sizes());
  at::Tensor sums = at::zeros({at::get_num_threads(), 2, channels}, y.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_lif_stats", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor none;
    const auto in = make_view<scalar_t, acc_t>(y, none, none, none, none, none);
    double* all = sums.mutable_data_ptr<double>();
    for_each_block(in.n, [&](int64_t first, int64_t len) {
      double s[kBlock], ss[kBlock];
      int64_t ch[kBlock];
      std::fill(s, s + len, 0.0);
      std::fill(ss, ss + len, 0.0);
      for (int64_t t = 0; t < in.steps; ++t) {
        const scalar_t* __restrict__ yt = in.y + t * in.n + first;
        for (int64_t k = 0; k < len; ++k) {
          const double v = static_cast<double>(static_cast<acc_t>(yt[k]));
          s[k] += v;
          ss[k] += v * v;
        }
      }
      in.channels_of(first, len, ch);
      double* mine = all + 2 * channels * at::get_thread_num();
      for (int64_t k = 0; k < len; ++k) {
        mine[ch[k]] += s[k];
        mine[channels + ch[k]] += ss[k];
      }
    });
  });
  const at::Tensor totals = sums.sum(0).div(static_cast<double>(count));  // [2, C]: E[y], E[y²]
  const at::Tensor mean = totals[0];
  const at::Tensor var = totals[1].sub(mean.mul(mean)).clamp_min(0.0);
  const at::ScalarType dtype = param_dtype(y.scalar_type());
  return {mean.to(dtype), var.to(dtype)};
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CPU, m) {
  m.impl("bn_lif_forward", &bn_lif_forward_op<CpuKernels>);
  m.impl("bn_lif_backward", &bn_lif_backward_op<CpuKernels>);
  m.impl("bn_lif_stats", &bn_lif_stats_cpu);
}

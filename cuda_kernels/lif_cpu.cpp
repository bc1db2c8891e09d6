// Multi-step LIF on the CPU: forward over all T steps and the reverse-time backward, fused (one
// pass over the data each way), parallel over neurons with at::parallel_for (OpenMP) and
// vectorised by the compiler over a block of neurons whose state stays in L1. Same schema,
// storage, layout (lif_common.h: channels-last without a copy) and arithmetic (lif_math.h) as
// lif.cu; equations: tdsnn/neurons.py.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <type_traits>

#include "lif_common.h"
#include "lif_math.h"

namespace {

using namespace tdsnn_lif;

constexpr int64_t kBlock = 256;   // neurons whose state a thread keeps while it walks over T
constexpr int64_t kGrain = 4096;  // neurons per parallel task, at least

// Membrane storage. float/double: H itself. half/bf16: U = H - v_threshold rounded to nearest;
// a negative U that rounds to -0 is stored as the negative value nearest 0 instead, so that
// (U >= 0) == fired (the only way rounding can cross 0).
template <typename mem_t, typename acc_t>
inline mem_t store_membrane(acc_t h, bool fired, acc_t v_threshold) {
  if constexpr (sizeof(mem_t) == 2) {
    const mem_t u = static_cast<mem_t>(h - v_threshold);
    if (!fired && static_cast<float>(u) >= 0.f) return mem_t(0x8001, mem_t::from_bits());
    return u;
  } else {
    return static_cast<mem_t>(h);
  }
}

template <typename mem_t>
constexpr bool kShifted = sizeof(mem_t) == 2;

template <typename scalar_t, typename mem_t, typename acc_t, bool kDecayInput, bool kSoft>
void forward_block(const scalar_t* x, scalar_t* spikes, mem_t* membrane, int64_t steps,
                   int64_t n, int64_t first, int64_t len, const LIFConst<acc_t>& c) {
  acc_t v[kBlock];
  std::fill(v, v + len, c.rest);
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t offset = t * n + first;
    const scalar_t* xt = x + offset;
    scalar_t* st = spikes + offset;
    mem_t* mt = membrane + offset;
    for (int64_t k = 0; k < len; ++k) {
      const acc_t h = step(static_cast<acc_t>(xt[k]), v[k], c, kDecayInput, kSoft);
      const bool fired = fires(h, c);
      st[k] = fired ? scalar_t(1) : scalar_t(0);
      mt[k] = store_membrane<mem_t, acc_t>(h, fired, c.v_threshold);
    }
  }
}

// The reverse-time recurrence (lif_math.h: charged_grad) from the stored membrane.
template <typename grad_t, typename mem_t, typename acc_t, Surrogate kSurrogate>
void backward_block(const grad_t* grad_spikes, const acc_t* grad_mem, const mem_t* membrane,
                    grad_t* grad_x, int64_t steps, int64_t n, int64_t first, int64_t len,
                    const LIFConst<acc_t>& c, bool detach_reset, acc_t alpha) {
  acc_t later[kBlock];  // grad_h[t+1]
  std::fill(later, later + len, acc_t(0));
  for (int64_t t = steps - 1; t >= 0; --t) {
    const int64_t offset = t * n + first;
    const mem_t* mt = membrane + offset;
    const grad_t* gs = grad_spikes ? grad_spikes + offset : nullptr;
    const acc_t* gm = grad_mem ? grad_mem + offset : nullptr;
    grad_t* gx = grad_x + offset;
    // with_gm: whether grad_mem is given, as a constant, so that no load in the loop is
    // conditional and the loop vectorises
    auto walk = [&](auto with_gm) {
      for (int64_t k = 0; k < len; ++k) {
        const Charged<acc_t> m = charged(static_cast<acc_t>(mt[k]), kShifted<mem_t>, c);
        const acc_t grad_s = gs ? static_cast<acc_t>(gs[k]) : acc_t(0);
        const acc_t grad_h = with_gm ? gm[k] : no_grad<acc_t>();
        const acc_t gh =
            charged_grad(m, grad_s, grad_h, later[k], c, kSurrogate, detach_reset, alpha);
        later[k] = gh;
        gx[k] = static_cast<grad_t>(input_grad(gh, c));
      }
    };
    if (gm) {
      walk(std::true_type{});
    } else {
      walk(std::false_type{});
    }
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

// The loops behind lif_common.h's lif_forward_op / lif_backward_op: blocks of neurons in
// parallel, the options the loops branch on as template arguments.
struct CpuKernels {
  static constexpr c10::DeviceType kDevice = c10::DeviceType::CPU;

  template <typename scalar_t, typename mem_t, typename acc_t>
  static void forward(const scalar_t* x, scalar_t* spikes, mem_t* membrane, int64_t steps,
                      int64_t n, const LIFConst<acc_t>& c) {
    for_each_block(n, [&](int64_t first, int64_t len) {
      if (c.decay_input && c.soft_reset) {
        forward_block<scalar_t, mem_t, acc_t, true, true>(x, spikes, membrane, steps, n, first,
                                                          len, c);
      } else if (c.decay_input) {
        forward_block<scalar_t, mem_t, acc_t, true, false>(x, spikes, membrane, steps, n, first,
                                                           len, c);
      } else if (c.soft_reset) {
        forward_block<scalar_t, mem_t, acc_t, false, true>(x, spikes, membrane, steps, n, first,
                                                           len, c);
      } else {
        forward_block<scalar_t, mem_t, acc_t, false, false>(x, spikes, membrane, steps, n, first,
                                                            len, c);
      }
    });
  }

  template <typename grad_t, typename mem_t, typename acc_t>
  static void backward(const grad_t* gsp, const acc_t* gmp, const mem_t* mp, grad_t* gxp,
                       int64_t steps, int64_t n, const LIFConst<acc_t>& c, bool detach_reset,
                       Surrogate surrogate, acc_t alpha) {
    for_each_block(n, [&](int64_t first, int64_t len) {
      switch (surrogate) {
        case Surrogate::ATan:
          backward_block<grad_t, mem_t, acc_t, Surrogate::ATan>(gsp, gmp, mp, gxp, steps, n,
                                                                first, len, c, detach_reset, alpha);
          break;
        case Surrogate::Sigmoid:
          backward_block<grad_t, mem_t, acc_t, Surrogate::Sigmoid>(
              gsp, gmp, mp, gxp, steps, n, first, len, c, detach_reset, alpha);
          break;
        case Surrogate::PiecewiseQuadratic:
          backward_block<grad_t, mem_t, acc_t, Surrogate::PiecewiseQuadratic>(
              gsp, gmp, mp, gxp, steps, n, first, len, c, detach_reset, alpha);
          break;
        default:
          backward_block<grad_t, mem_t, acc_t, Surrogate::FastSigmoid>(
              gsp, gmp, mp, gxp, steps, n, first, len, c, detach_reset, alpha);
      }
    });
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CPU, m) {
  m.impl("lif_forward", &lif_forward_op<CpuKernels>);
  m.impl("lif_backward", &lif_backward_op<CpuKernels>);
}

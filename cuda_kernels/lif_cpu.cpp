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
    for (int64_t k = 0; k < len; ++k) {
      const Charged<acc_t> m = charged(static_cast<acc_t>(mt[k]), kShifted<mem_t>, c);
      const acc_t grad_s = gs ? static_cast<acc_t>(gs[k]) : acc_t(0);
      const acc_t grad_h = gm ? gm[k] : no_grad<acc_t>();
      const acc_t gh =
          charged_grad(m, grad_s, grad_h, later[k], c, kSurrogate, detach_reset, alpha);
      later[k] = gh;
      gx[k] = static_cast<grad_t>(input_grad(gh, c));
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

std::tuple<at::Tensor, at::Tensor> lif_forward_cpu(const at::Tensor& x_in, double tau,
                                                   double v_threshold, double v_reset,
                                                   bool soft_reset, bool decay_input,
                                                   bool /*detach_reset*/,
                                                   std::string_view surrogate_name, double alpha,
                                                   bool full_membrane) {
  TORCH_CHECK(x_in.device().is_cpu(), "lif_forward: x must be a CPU tensor, got ", x_in.device());
  TORCH_CHECK(x_in.dim() >= 1, "lif_forward: x must be time-major [T, *], got a 0-d tensor");
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()),
              "lif_forward: x must be float16, bfloat16, float32 or float64, got ",
              x_in.scalar_type());
  check_params("lif_forward", tau, v_threshold, v_reset, soft_reset, alpha);
  parse_surrogate("lif_forward", std::string(surrogate_name));
  const at::Tensor x = time_major(x_in);
  at::Tensor spikes = at::empty_like(x);
  at::Tensor membrane =
      at::empty_like(x, x.options().dtype(membrane_dtype(x.scalar_type(), full_membrane)));
  if (x.numel() == 0) return {spikes, membrane};
  const int64_t steps = x.size(0);
  const int64_t n = x.numel() / steps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_const<acc_t>(tau, v_threshold, v_reset, soft_reset, decay_input);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* sp = spikes.mutable_data_ptr<scalar_t>();
    auto run = [&](auto* mp) {
      using mem_t = std::remove_pointer_t<decltype(mp)>;
      for_each_block(n, [&](int64_t first, int64_t len) {
        if (decay_input && soft_reset) {
          forward_block<scalar_t, mem_t, acc_t, true, true>(xp, sp, mp, steps, n, first, len, c);
        } else if (decay_input) {
          forward_block<scalar_t, mem_t, acc_t, true, false>(xp, sp, mp, steps, n, first, len, c);
        } else if (soft_reset) {
          forward_block<scalar_t, mem_t, acc_t, false, true>(xp, sp, mp, steps, n, first, len, c);
        } else {
          forward_block<scalar_t, mem_t, acc_t, false, false>(xp, sp, mp, steps, n, first, len,
                                                              c);
        }
      });
    };
    if (membrane.scalar_type() == x.scalar_type()) {
      run(membrane.mutable_data_ptr<scalar_t>());
    } else {
      run(membrane.mutable_data_ptr<float>());
    }
  });
  return {spikes, membrane};
}

template <typename grad_t, typename mem_t, typename acc_t>
void backward_dispatch(Surrogate surrogate, const grad_t* gsp, const acc_t* gmp, const mem_t* mp,
                       grad_t* gxp, int64_t steps, int64_t n, const LIFConst<acc_t>& c,
                       bool detach_reset, acc_t alpha) {
  for_each_block(n, [&](int64_t first, int64_t len) {
    switch (surrogate) {
      case Surrogate::ATan:
        backward_block<grad_t, mem_t, acc_t, Surrogate::ATan>(gsp, gmp, mp, gxp, steps, n, first,
                                                              len, c, detach_reset, alpha);
        break;
      case Surrogate::Sigmoid:
        backward_block<grad_t, mem_t, acc_t, Surrogate::Sigmoid>(gsp, gmp, mp, gxp, steps, n,
                                                                 first, len, c, detach_reset, alpha);
        break;
      case Surrogate::PiecewiseQuadratic:
        backward_block<grad_t, mem_t, acc_t, Surrogate::PiecewiseQuadratic>(
            gsp, gmp, mp, gxp, steps, n, first, len, c, detach_reset, alpha);
        break;
      default:
        backward_block<grad_t, mem_t, acc_t, Surrogate::FastSigmoid>(gsp, gmp, mp, gxp, steps, n,
                                                                     first, len, c, detach_reset, alpha);
    }
  });
}

at::Tensor lif_backward_cpu(const std::optional<at::Tensor>& grad_spikes_in,
                            const std::optional<at::Tensor>& grad_membrane_in,
                            const at::Tensor& membrane_in, double tau, double v_threshold,
                            double v_reset, bool soft_reset, bool decay_input, bool detach_reset,
                            std::string_view surrogate_name, double alpha,
                            at::ScalarType grad_dtype) {
  TORCH_CHECK(membrane_in.device().is_cpu(), "lif_backward: membrane must be a CPU tensor, got ",
              membrane_in.device());
  TORCH_CHECK(membrane_in.dim() >= 1, "lif_backward: membrane must be [T, *], got a 0-d tensor");
  check_params("lif_backward", tau, v_threshold, v_reset, soft_reset, alpha);
  const Surrogate surrogate = parse_surrogate("lif_backward", std::string(surrogate_name));
  TORCH_CHECK(at::isFloatingType(grad_dtype),
              "lif_backward: grad_dtype must be a floating-point type, got ", grad_dtype);
  const at::Tensor membrane = time_major(membrane_in);
  const at::ScalarType mem_dtype = membrane.scalar_type();
  const bool reduced = mem_dtype == at::kHalf || mem_dtype == at::kBFloat16;
  TORCH_CHECK(!reduced || mem_dtype == grad_dtype, "lif_backward: a ", mem_dtype,
              " membrane goes with ", mem_dtype, " gradients, got grad_dtype ", grad_dtype);
  TORCH_CHECK(reduced || mem_dtype == at::kFloat || mem_dtype == at::kDouble,
              "lif_backward: membrane must be float32/float64 or the gradient dtype, got ",
              mem_dtype);
  const auto acc_dtype = grad_dtype == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor grad_spikes, grad_mem;
  for (const auto& [given, name] : {std::pair{&grad_spikes_in, "grad_spikes"},
                                    std::pair{&grad_membrane_in, "grad_membrane"}}) {
    if (given->has_value() && (*given)->defined()) {
      TORCH_CHECK((*given)->sizes() == membrane.sizes(), "lif_backward: ", name,
                  " must have the membrane's shape ", membrane.sizes(), ", got ",
                  (*given)->sizes());
      TORCH_CHECK((*given)->device().is_cpu(), "lif_backward: ", name,
                  " must be a CPU tensor, got ", (*given)->device());
    }
  }
  if (grad_spikes_in.has_value() && grad_spikes_in->defined()) {
    grad_spikes = strided_like(*grad_spikes_in, membrane, grad_dtype);
  }
  if (grad_membrane_in.has_value() && grad_membrane_in->defined()) {
    grad_mem = strided_like(*grad_membrane_in, membrane, acc_dtype);
  }
  at::Tensor grad_x = at::empty_like(membrane, membrane.options().dtype(grad_dtype));
  if (membrane.numel() == 0) return grad_x;
  const int64_t steps = membrane.size(0);
  const int64_t n = membrane.numel() / steps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_dtype, "lif_backward", [&] {
    using grad_t = scalar_t;
    using acc_t = at::opmath_type<grad_t>;
    const auto c = make_const<acc_t>(tau, v_threshold, v_reset, soft_reset, decay_input);
    const acc_t* gmp = grad_mem.defined() ? grad_mem.const_data_ptr<acc_t>() : nullptr;
    const grad_t* gsp = grad_spikes.defined() ? grad_spikes.const_data_ptr<grad_t>() : nullptr;
    grad_t* gxp = grad_x.mutable_data_ptr<grad_t>();
    if (mem_dtype == grad_dtype) {
      backward_dispatch(surrogate, gsp, gmp, membrane.const_data_ptr<grad_t>(), gxp, steps, n, c,
                        detach_reset, acc_t(alpha));
    } else if (mem_dtype == at::kFloat) {
      backward_dispatch(surrogate, gsp, gmp, membrane.const_data_ptr<float>(), gxp, steps, n, c,
                        detach_reset, acc_t(alpha));
    } else {
      backward_dispatch(surrogate, gsp, gmp, membrane.const_data_ptr<double>(), gxp, steps, n, c,
                        detach_reset, acc_t(alpha));
    }
  });
  return grad_x;
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
}

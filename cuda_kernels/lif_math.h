// The LIF's arithmetic, written once for the four kernels (lif.cu, lif_cpu.cpp, bn_lif.cu,
// bn_lif_cpu.cpp): the constants, the charge, the spike and the reset of the forward, the
// surrogate derivatives and the reverse-time step of the backward, for one neuron and one step.
// Plain C++ without ATen: nvcc compiles it for host and device, the host compiler for the CPU
// files. Equations: tdsnn/neurons.py.
//
// Units: the membrane V, the charged potential H, v_threshold, v_reset and the input x share the
// input's units; tau is the membrane time constant in time steps (decay = 1 - 1/tau per step);
// alpha is the surrogate's sharpness per unit of H - v_threshold. acc_t is the arithmetic type:
// float, or double for double input.
//
//   forward:  H[t] = drive(x[t]) + decay·V[t-1], drive = (x + rest)/tau with decay_input, else
//             x + rest/tau (rest = v_reset, 0 for a soft reset; V[0] = rest);
//             S[t] = H[t] >= v_threshold; V[t] = H[t] - v_threshold (soft) or v_reset (hard)
//             after a spike, else H[t].
//   backward: dL/dH[t] = dL/dS[t]·psi[t] + dL/dH[t] (the membrane's own gradient)
//             + decay·D[t]·dL/dH[t+1], psi = g'(H - v_threshold) the surrogate derivative and
//             D = dV/dH the reset's; dL/dx[t] = dL/dH[t] (/tau with decay_input).
//
// The CPU kernels' outputs are pinned to the bit (tests/test_pinned_outputs.py): a change to an
// expression here, even one that is the same in exact arithmetic, changes them.

#pragma once

#include <cmath>

#ifdef __CUDACC__
#define TDSNN_HD __host__ __device__ __forceinline__
#else
#define TDSNN_HD inline
#endif

namespace tdsnn_lif {

// ------------------------------------------------------------------------------- constants

template <typename acc_t>
struct LIFConst {
  acc_t tau, decay, v_threshold, v_reset, rest;
  bool soft_reset, decay_input;
};

template <typename acc_t>
LIFConst<acc_t> make_const(double tau, double v_threshold, double v_reset, bool soft_reset,
                           bool decay_input) {
  const double rest = soft_reset ? 0.0 : v_reset;
  return LIFConst<acc_t>{acc_t(tau),     acc_t(1.0 - 1.0 / tau), acc_t(v_threshold),
                         acc_t(v_reset), acc_t(rest),            soft_reset,
                         decay_input};
}

// ------------------------------------------------------------------------------- forward

// H[t] from the input x[t] and V[t-1]. ``decay_input`` is c.decay_input; a caller passes it as a
// constant to have the choice folded away.
template <typename acc_t>
TDSNN_HD acc_t charge(acc_t x, acc_t v, const LIFConst<acc_t>& c, bool decay_input) {
  const acc_t drive = decay_input ? (x + c.rest) / c.tau : x + c.rest / c.tau;
  return drive + c.decay * v;
}

// S[t]: whether H[t] reaches the threshold.
template <typename acc_t>
TDSNN_HD bool fires(acc_t h, const LIFConst<acc_t>& c) {
  return h >= c.v_threshold;
}

// V[t] from H[t] and S[t]. ``soft_reset`` is c.soft_reset (a constant folds the choice away).
template <typename acc_t>
TDSNN_HD acc_t reset(acc_t h, bool fired, const LIFConst<acc_t>& c, bool soft_reset) {
  return fired ? (soft_reset ? h - c.v_threshold : c.v_reset) : h;
}

// One step of one neuron: H[t] from x[t], and ``v`` from V[t-1] to V[t]; S[t] = fires(H[t]).
// (A struct holding S[t] as well keeps g++ from vectorising the CPU loops.)
template <typename acc_t>
TDSNN_HD acc_t step(acc_t x, acc_t& v, const LIFConst<acc_t>& c, bool decay_input,
                    bool soft_reset) {
  const acc_t h = charge(x, v, c, decay_input);
  v = reset(h, fires(h, c), c, soft_reset);
  return h;
}

template <typename acc_t>
TDSNN_HD acc_t step(acc_t x, acc_t& v, const LIFConst<acc_t>& c) {
  return step(x, v, c, c.decay_input, c.soft_reset);
}

// ------------------------------------------------------------------------------- backward

enum class Surrogate { ATan, Sigmoid, PiecewiseQuadratic, FastSigmoid };

// g'(x) of the surrogate, x = H - v_threshold; a constant ``s`` folds the switch away.
template <typename acc_t>
TDSNN_HD acc_t surrogate_grad(Surrogate s, acc_t x, acc_t alpha) {
  switch (s) {
    case Surrogate::ATan: {
      const acc_t z = x * (acc_t(M_PI) / 2 * alpha);
      return (alpha / 2) / (1 + z * z);
    }
    case Surrogate::Sigmoid: {
      const acc_t sg = acc_t(1) / (acc_t(1) + std::exp(-alpha * x));
      return alpha * sg * (1 - sg);
    }
    case Surrogate::PiecewiseQuadratic: {
      const acc_t g = alpha - alpha * alpha * std::abs(x);
      return g > 0 ? g : acc_t(0);
    }
    default: {
      const acc_t z = 1 + alpha * std::abs(x);
      return 1 / (z * z);
    }
  }
}

// H[t] as the backward reads it: h itself and above = h - v_threshold.
template <typename acc_t>
struct Charged {
  acc_t h, above;
};

// From the stored membrane: H itself, or (``shifted``: the float16/bfloat16 storage)
// H - v_threshold, which is exact in ``above``.
template <typename acc_t>
TDSNN_HD Charged<acc_t> charged(acc_t stored, bool shifted, const LIFConst<acc_t>& c) {
  if (shifted) return {stored + c.v_threshold, stored};
  return {stored, stored - c.v_threshold};
}

// D[t] = dV[t]/dH[t] with psi = g'(H[t] - v_threshold): soft 1 - v_threshold·psi, hard
// 1 - S[t] + (v_reset - H[t])·psi; detach_reset drops the psi terms. Selects, no branches, so
// that the CPU loops vectorise.
template <typename acc_t>
TDSNN_HD acc_t reset_grad(Charged<acc_t> m, acc_t psi, const LIFConst<acc_t>& c,
                          bool detach_reset) {
  const acc_t silent = m.above >= 0 ? acc_t(0) : acc_t(1);  // 1 - S[t], exact when shifted
  const acc_t soft = 1 - c.v_threshold * (detach_reset ? acc_t(0) : psi);
  const acc_t hard = detach_reset ? silent : silent + (c.v_reset - m.h) * psi;
  return c.soft_reset ? soft : hard;
}

// -0: the one value whose addition leaves every sum as it is, to the bit (x + 0 turns -0 into 0).
template <typename acc_t>
TDSNN_HD acc_t no_grad() {
  return -acc_t(0);
}

// dL/dH[t] from H[t], the incoming gradients of S[t] (``grad_s``) and of H[t] itself
// (``grad_h``) and dL/dH[t+1] (``later``). An absent grad_s is 0, an absent grad_h
// no_grad<acc_t>().
template <typename acc_t>
TDSNN_HD acc_t charged_grad(Charged<acc_t> m, acc_t grad_s, acc_t grad_h, acc_t later,
                            const LIFConst<acc_t>& c, Surrogate s, bool detach_reset,
                            acc_t alpha) {
  const acc_t psi = surrogate_grad<acc_t>(s, m.above, alpha);
  return psi * grad_s + grad_h + later * (reset_grad(m, psi, c, detach_reset) * c.decay);
}

// dL/dx[t] from dL/dH[t]: dH/dx = 1/tau with decay_input, else 1.
template <typename acc_t>
TDSNN_HD acc_t input_grad(acc_t grad_h, const LIFConst<acc_t>& c) {
  return c.decay_input ? grad_h / c.tau : grad_h;
}

// dH/dx as a factor, for loops that multiply by it (bn_lif_cpu.cpp): grad_h · input_grad_scale
// may differ from input_grad in the last bit.
template <typename acc_t>
TDSNN_HD acc_t input_grad_scale(const LIFConst<acc_t>& c) {
  return c.decay_input ? 1 / c.tau : acc_t(1);
}

}  // namespace tdsnn_lif

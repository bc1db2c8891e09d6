// What the CPU (lif_cpu.cpp) and CUDA (lif.cu) LIF kernels share besides the arithmetic
// (lif_math.h): the checks of the op's arguments, the membrane dtype and the storage layout they
// walk. Equations: tdsnn/neurons.py.
//
// Layout: any dense, non-overlapping storage whose time dimension is outermost (stride(0) =
// numel / T) runs without a copy, channels-last [T, B, C, H, W] included: the ops are
// elementwise in every dimension but time, so they walk element (t, i) at data + t * n + i in
// storage order, and their outputs take the input's strides (every other layout is copied to
// a contiguous one first). The fused batch-norm + LIF op (bn_lif_common.h) shares the layout.

#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "lif_math.h"

namespace tdsnn_lif {

inline Surrogate parse_surrogate(const char* op, const std::string& name) {
  if (name == "atan") return Surrogate::ATan;
  if (name == "sigmoid") return Surrogate::Sigmoid;
  if (name == "piecewise-quadratic") return Surrogate::PiecewiseQuadratic;
  if (name == "fast-sigmoid") return Surrogate::FastSigmoid;
  TORCH_CHECK(false, op, ": unknown surrogate '", name,
              "'; expected atan, sigmoid, piecewise-quadratic or fast-sigmoid");
}

inline void check_params(const char* op, double tau, double v_threshold, double v_reset,
                         bool soft_reset, double alpha) {
  TORCH_CHECK(std::isfinite(tau) && tau >= 1.0, op, ": tau must be >= 1 time step, got ", tau);
  TORCH_CHECK(std::isfinite(v_threshold), op, ": v_threshold must be finite, got ", v_threshold);
  TORCH_CHECK(soft_reset || v_threshold > v_reset, op,
              ": v_threshold must be > v_reset for a hard reset, got v_threshold=", v_threshold,
              ", v_reset=", v_reset);
  TORCH_CHECK(std::isfinite(alpha) && alpha > 0, op, ": surrogate alpha must be > 0, got ",
              alpha);
}

// dtype of the saved membrane: x's for float16/bfloat16 unless full_membrane (then float32);
// x's own for float32/float64.
inline c10::ScalarType membrane_dtype(c10::ScalarType x_dtype, bool full_membrane) {
  const bool half = x_dtype == c10::kHalf || x_dtype == c10::kBFloat16;
  if (half) return full_membrane ? c10::kFloat : x_dtype;
  return x_dtype;
}

// Whether ``t`` is dense and non-overlapping with time outermost: then element (t, i) sits at
// data + t * n + i for some order of the n elements of a step, and every tensor with t's
// strides agrees on that order.
inline bool time_major_dense(const at::Tensor& t) {
  if (t.dim() == 0 || !t.is_non_overlapping_and_dense()) return false;
  const int64_t n = t.size(0) == 0 ? 0 : t.numel() / t.size(0);
  return t.size(0) <= 1 || t.stride(0) == n;
}

// ``t`` itself when it is time-major dense, else a contiguous copy.
inline at::Tensor time_major(const at::Tensor& t) {
  return time_major_dense(t) ? t : t.contiguous();
}

// ``t`` with ``like``'s strides, device and ``dtype`` (a copy unless they already match).
inline at::Tensor strided_like(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype) {
  if (t.scalar_type() == dtype && t.device() == like.device() && t.strides() == like.strides()) {
    return t;
  }
  at::Tensor out = at::empty_like(like, like.options().dtype(dtype));
  out.copy_(t);
  return out;
}

}  // namespace tdsnn_lif

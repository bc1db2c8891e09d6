// What the CPU (lif_cpu.cpp) and CUDA (lif.cu) LIF kernels share besides the arithmetic
// (lif_math.h): the ops' host side (checks of the arguments, the membrane dtype, the storage
// layout they walk, the outputs, the dispatch over dtypes), each device file supplying only the
// loops over its storage. Equations: tdsnn/neurons.py.
//
// Layout: any dense, non-overlapping storage whose time dimension is outermost (stride(0) =
// numel / T) runs without a copy, channels-last [T, B, C, H, W] included: the ops are
// elementwise in every dimension but time, so they walk element (t, i) at data + t * n + i in
// storage order, and their outputs take the input's strides (every other layout is copied to
// a contiguous one first). The fused batch-norm + LIF op (bn_lif_common.h) shares the layout.

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

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

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

// The checks of lif_forward's arguments for the kernel on ``device``.
inline void check_forward(const at::Tensor& x, c10::DeviceType device, double tau,
                          double v_threshold, double v_reset, bool soft_reset,
                          std::string_view surrogate, double alpha) {
  TORCH_CHECK(x.device().type() == device, "lif_forward: x must be a ",
              c10::DeviceTypeName(device), " tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 1, "lif_forward: x must be time-major [T, *], got a 0-d tensor");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "lif_forward: x must be float16, bfloat16, float32 or float64, got ",
              x.scalar_type());
  check_params("lif_forward", tau, v_threshold, v_reset, soft_reset, alpha);
  parse_surrogate("lif_forward", std::string(surrogate));
}

// The checks of lif_backward's arguments for the kernel on ``device``; the surrogate.
inline Surrogate check_backward(const std::optional<at::Tensor>& grad_spikes,
                                const std::optional<at::Tensor>& grad_membrane,
                                const at::Tensor& membrane, c10::DeviceType device, double tau,
                                double v_threshold, double v_reset, bool soft_reset,
                                std::string_view surrogate, double alpha,
                                at::ScalarType grad_dtype) {
  TORCH_CHECK(membrane.device().type() == device, "lif_backward: membrane must be a ",
              c10::DeviceTypeName(device), " tensor, got ", membrane.device());
  TORCH_CHECK(membrane.dim() >= 1, "lif_backward: membrane must be [T, *], got a 0-d tensor");
  check_params("lif_backward", tau, v_threshold, v_reset, soft_reset, alpha);
  const Surrogate s = parse_surrogate("lif_backward", std::string(surrogate));
  TORCH_CHECK(at::isFloatingType(grad_dtype),
              "lif_backward: grad_dtype must be a floating-point type, got ", grad_dtype);
  const at::ScalarType mem_dtype = membrane.scalar_type();
  const bool reduced = mem_dtype == at::kHalf || mem_dtype == at::kBFloat16;
  TORCH_CHECK(!reduced || mem_dtype == grad_dtype, "lif_backward: a ", mem_dtype,
              " membrane goes with ", mem_dtype, " gradients, got grad_dtype ", grad_dtype);
  TORCH_CHECK(reduced || mem_dtype == at::kFloat || mem_dtype == at::kDouble,
              "lif_backward: membrane must be float32/float64 or the gradient dtype, got ",
              mem_dtype);
  for (const auto& [g, name] : {std::pair{&grad_spikes, "grad_spikes"},
                                std::pair{&grad_membrane, "grad_membrane"}}) {
    if (!given(*g)) continue;
    TORCH_CHECK((*g)->sizes() == membrane.sizes(), "lif_backward: ", name,
                " must have the membrane's shape ", membrane.sizes(), ", got ", (*g)->sizes());
    TORCH_CHECK((*g)->device().type() == device, "lif_backward: ", name, " must be a ",
                c10::DeviceTypeName(device), " tensor, got ", (*g)->device());
  }
  return s;
}

// ------------------------------------------------------------------ the ops, for either device
//
// lif_forward and lif_backward around the kernels of one device: ``Kernels`` (lif.cu: CUDA,
// lif_cpu.cpp: CPU) holds kDevice and two static function templates that run the T steps of
// the n neurons of time-major storage:
//   forward(x, spikes, membrane, steps, n, LIFConst c)
//   backward(grad_spikes, grad_mem, membrane, grad_x, steps, n, c, detach_reset, surrogate,
//            alpha)  (grad_spikes, grad_mem null where absent)

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> lif_forward_op(const at::Tensor& x_in, double tau,
                                                  double v_threshold, double v_reset,
                                                  bool soft_reset, bool decay_input,
                                                  bool /*detach_reset*/,
                                                  std::string_view surrogate, double alpha,
                                                  bool full_membrane) {
  check_forward(x_in, Kernels::kDevice, tau, v_threshold, v_reset, soft_reset, surrogate, alpha);
  const c10::DeviceGuard guard(x_in.device());
  const at::Tensor x = time_major(x_in);
  at::Tensor spikes = at::empty_like(x);
  at::Tensor membrane =
      at::empty_like(x, x.options().dtype(membrane_dtype(x.scalar_type(), full_membrane)));
  if (x.numel() == 0) return {spikes, membrane};
  const int64_t steps = x.size(0), n = x.numel() / steps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lif_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto c = make_const<acc_t>(tau, v_threshold, v_reset, soft_reset, decay_input);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* sp = spikes.mutable_data_ptr<scalar_t>();
    if (membrane.scalar_type() == x.scalar_type()) {
      Kernels::forward(xp, sp, membrane.mutable_data_ptr<scalar_t>(), steps, n, c);
    } else {
      Kernels::forward(xp, sp, membrane.mutable_data_ptr<float>(), steps, n, c);
    }
  });
  return {spikes, membrane};
}

template <typename Kernels>
at::Tensor lif_backward_op(const std::optional<at::Tensor>& grad_spikes_in,
                           const std::optional<at::Tensor>& grad_membrane_in,
                           const at::Tensor& membrane_in, double tau, double v_threshold,
                           double v_reset, bool soft_reset, bool decay_input, bool detach_reset,
                           std::string_view surrogate_name, double alpha,
                           at::ScalarType grad_dtype) {
  const Surrogate surrogate =
      check_backward(grad_spikes_in, grad_membrane_in, membrane_in, Kernels::kDevice, tau,
                     v_threshold, v_reset, soft_reset, surrogate_name, alpha, grad_dtype);
  const c10::DeviceGuard guard(membrane_in.device());
  const at::Tensor membrane = time_major(membrane_in);
  const at::ScalarType mem_dtype = membrane.scalar_type();
  const auto acc_dtype = grad_dtype == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor grad_spikes =
      given(grad_spikes_in) ? strided_like(*grad_spikes_in, membrane, grad_dtype) : at::Tensor();
  const at::Tensor grad_mem = given(grad_membrane_in)
                                  ? strided_like(*grad_membrane_in, membrane, acc_dtype)
                                  : at::Tensor();
  at::Tensor grad_x = at::empty_like(membrane, membrane.options().dtype(grad_dtype));
  if (membrane.numel() == 0) return grad_x;
  const int64_t steps = membrane.size(0), n = membrane.numel() / steps;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_dtype, "lif_backward", [&] {
    using grad_t = scalar_t;
    using acc_t = at::opmath_type<grad_t>;
    const auto c = make_const<acc_t>(tau, v_threshold, v_reset, soft_reset, decay_input);
    const acc_t* gmp = grad_mem.defined() ? grad_mem.const_data_ptr<acc_t>() : nullptr;
    const grad_t* gsp = grad_spikes.defined() ? grad_spikes.const_data_ptr<grad_t>() : nullptr;
    grad_t* gxp = grad_x.mutable_data_ptr<grad_t>();
    auto run = [&](const auto* mp) {
      Kernels::backward(gsp, gmp, mp, gxp, steps, n, c, detach_reset, surrogate, acc_t(alpha));
    };
    if (mem_dtype == grad_dtype) {
      run(membrane.const_data_ptr<grad_t>());
    } else if (mem_dtype == at::kFloat) {
      run(membrane.const_data_ptr<float>());
    } else {
      run(membrane.const_data_ptr<double>());
    }
  });
  return grad_x;
}

}  // namespace tdsnn_lif

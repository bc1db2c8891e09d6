// What the CPU (bn_lif_cpu.cpp) and CUDA (bn_lif.cu) kernels of the fused batch-norm apply
// (+ shortcut) + multi-step LIF share: the argument checks, the per-channel coefficients, the
// view of the storage (View, make_view) and the ops' host side (bn_lif_forward_op,
// bn_lif_backward_op), each device file supplying only its kernels.
//
// The op: z = (y - mean[c]) * invstd[c] * weight[c] + bias[c] (+ shortcut), then the LIF of
// lif_common.h over the T steps of z. y is the convolution's output [T, B, C, *] (channel
// dimension 2), time-major dense (lif_common.h: channels-last without a copy; the shortcut, the
// incoming gradients and the outputs take y's strides); the channel of storage offset i within
// a time step is (i / stride_c) % C for every dense non-overlapping layout (contiguous:
// stride_c = H·W, channels-last: stride_c = 1).

#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

#include "lif_common.h"

namespace tdsnn_bn_lif {

// The per-channel parameters' dtype for y's: float32 (float64 for float64 y).
inline c10::ScalarType param_dtype(c10::ScalarType y_dtype) {
  return y_dtype == c10::kDouble ? c10::kDouble : c10::kFloat;
}

using tdsnn_lif::given;

// One clear error for every argument that does not fit y [T, B, C, *] on ``device``.
inline void check_inputs(const char* op, const at::Tensor& y, const at::Tensor& mean,
                         const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                         const std::optional<at::Tensor>& bias,
                         const std::optional<at::Tensor>& shortcut, c10::DeviceType device) {
  TORCH_CHECK(y.device().type() == device, op, ": y must be a ", c10::DeviceTypeName(device),
              " tensor, got ", y.device());
  TORCH_CHECK(y.dim() >= 3, op, ": y must be [T, B, C, *] (time, batch, channel, space), got ",
              y.dim(), " dimension(s)");
  TORCH_CHECK(at::isFloatingType(y.scalar_type()), op,
              ": y must be float16, bfloat16, float32 or float64, got ", y.scalar_type());
  const int64_t channels = y.size(2);
  const c10::ScalarType dtype = param_dtype(y.scalar_type());
  const std::pair<const at::Tensor*, const char*> params[] = {
      {&mean, "mean"},
      {&invstd, "invstd"},
      {given(weight) ? &*weight : nullptr, "weight"},
      {given(bias) ? &*bias : nullptr, "bias"}};
  for (const auto& [p, name] : params) {
    if (p == nullptr) continue;
    TORCH_CHECK(p->dim() == 1 && p->size(0) == channels, op, ": ", name,
                " must have one value per channel of y (", channels, "), got shape ",
                p->sizes());
    TORCH_CHECK(p->scalar_type() == dtype, op, ": ", name, " must be ", dtype, " for ",
                y.scalar_type(), " y, got ", p->scalar_type());
    TORCH_CHECK(p->device() == y.device(), op, ": ", name, " must be on y's device ",
                y.device(), ", got ", p->device());
  }
  if (given(shortcut)) {
    TORCH_CHECK(shortcut->sizes() == y.sizes(), op, ": shortcut must have y's shape ",
                y.sizes(), ", got ", shortcut->sizes());
    TORCH_CHECK(shortcut->scalar_type() == y.scalar_type(), op, ": shortcut must have y's dtype ",
                y.scalar_type(), ", got ", shortcut->scalar_type());
    TORCH_CHECK(shortcut->device() == y.device(), op, ": shortcut must be on y's device ",
                y.device(), ", got ", shortcut->device());
  }
}

// The incoming gradients (grad_spikes, grad_membrane) must have y's shape and device.
inline void check_grads(const char* op, const at::Tensor& y,
                        const std::optional<at::Tensor>& grad_spikes,
                        const std::optional<at::Tensor>& grad_membrane) {
  for (const auto& [g, name] : {std::pair{&grad_spikes, "grad_spikes"},
                                std::pair{&grad_membrane, "grad_membrane"}}) {
    if (!given(*g)) continue;
    TORCH_CHECK((*g)->sizes() == y.sizes(), op, ": ", name, " must have y's shape ", y.sizes(),
                ", got ", (*g)->sizes());
    TORCH_CHECK((*g)->device() == y.device(), op, ": ", name, " must be on y's device ",
                y.device(), ", got ", (*g)->device());
    TORCH_CHECK(at::isFloatingType((*g)->scalar_type()), op, ": ", name,
                " must be floating point, got ", (*g)->scalar_type());
  }
}

// The optional ``t`` with ``like``'s strides and ``dtype`` (undefined when not given).
inline at::Tensor optional_like(const std::optional<at::Tensor>& t, const at::Tensor& like,
                                at::ScalarType dtype) {
  return given(t) ? tdsnn_lif::strided_like(*t, like, dtype) : at::Tensor();
}

// The op's tensors as the kernels read them: y time-major, the shortcut with y's strides, the
// per-channel parameters contiguous; undefined where not given.
struct Inputs {
  at::Tensor y, mean, invstd, weight, bias, shortcut;
};

inline Inputs prepare_inputs(const at::Tensor& y_in, const at::Tensor& mean,
                             const at::Tensor& invstd, const std::optional<at::Tensor>& weight,
                             const std::optional<at::Tensor>& bias,
                             const std::optional<at::Tensor>& shortcut) {
  auto contiguous = [](const std::optional<at::Tensor>& t) {
    return given(t) ? t->contiguous() : at::Tensor();
  };
  const at::Tensor y = tdsnn_lif::time_major(y_in);
  return {y,
          mean.contiguous(),
          invstd.contiguous(),
          contiguous(weight),
          contiguous(bias),
          optional_like(shortcut, y, y.scalar_type())};
}

// z = y * scale + shift for one channel: scale = invstd·weight, shift = bias - mean·scale.
template <typename acc_t>
struct Affine {
  acc_t scale, shift;
};

template <typename acc_t>
C10_HOST_DEVICE inline Affine<acc_t> channel_affine(const acc_t* mean, const acc_t* invstd,
                                                    const acc_t* weight, const acc_t* bias,
                                                    int64_t c) {
  const acc_t scale = invstd[c] * (weight ? weight[c] : acc_t(1));
  return {scale, (bias ? bias[c] : acc_t(0)) - mean[c] * scale};
}

// The storage of one op call: pointers, sizes, and the channel of each storage offset.
template <typename scalar_t, typename acc_t>
struct View {
  const scalar_t* __restrict__ y;
  const scalar_t* __restrict__ shortcut;       // may be null
  const acc_t *mean, *invstd, *weight, *bias;  // null where not given (bn_lif_stats: all)
  int64_t steps, n, stride_c, channels;

  // The channel of storage offset ``i`` within a time step.
  C10_HOST_DEVICE int64_t channel(int64_t i) const { return (i / stride_c) % channels; }

  // Calls ``run(k, count, c)`` for each run of elements of one channel c among first..first+len
  // (k: the run's first index in the block): two divisions per block, then a counter (a
  // division per element would cost more than the T steps of a small T).
  template <typename F>
  void for_each_channel_run(int64_t first, int64_t len, const F& run) const {
    int64_t c = channel(first), within = first % stride_c;
    for (int64_t k = 0; k < len; within = 0) {
      const int64_t count = std::min(stride_c - within, len - k);
      run(k, count, c);
      k += count;
      if (++c == channels) c = 0;
    }
  }

  // The channels of the elements first..first+len into ``ch``.
  void channels_of(int64_t first, int64_t len, int64_t* ch) const {
    for_each_channel_run(first, len, [&](int64_t k, int64_t count, int64_t c) {
      std::fill(ch + k, ch + k + count, c);
    });
  }

  // scale/shift (and mean/invstd, when asked) of the elements first..first+len, and their
  // channels into ``ch``: one channel's values filled over each run.
  void coefficients(int64_t first, int64_t len, int64_t* ch, acc_t* scale, acc_t* shift,
                    acc_t* mu = nullptr, acc_t* is = nullptr) const {
    for_each_channel_run(first, len, [&](int64_t k, int64_t count, int64_t c) {
      const Affine<acc_t> a = channel_affine(mean, invstd, weight, bias, c);
      std::fill(ch + k, ch + k + count, c);
      std::fill(scale + k, scale + k + count, a.scale);
      std::fill(shift + k, shift + k + count, a.shift);
      if (mu) std::fill(mu + k, mu + k + count, mean[c]);
      if (is) std::fill(is + k, is + k + count, invstd[c]);
    });
  }
};

// The view of y [T, B, C, *] (time-major dense) and the tensors laid out like it; undefined
// tensors give null pointers.
template <typename scalar_t, typename acc_t>
View<scalar_t, acc_t> make_view(const at::Tensor& y, const at::Tensor& shortcut,
                                const at::Tensor& mean, const at::Tensor& invstd,
                                const at::Tensor& weight, const at::Tensor& bias) {
  auto data = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<acc_t>() : nullptr; };
  const int64_t steps = y.size(0);
  return {y.const_data_ptr<scalar_t>(),
          shortcut.defined() ? shortcut.const_data_ptr<scalar_t>() : nullptr,
          data(mean),
          data(invstd),
          data(weight),
          data(bias),
          steps,
          steps == 0 ? 0 : y.numel() / steps,
          std::max<int64_t>(y.stride(2), 1),
          y.size(2)};
}

template <typename scalar_t, typename acc_t>
View<scalar_t, acc_t> make_view(const Inputs& in) {
  return make_view<scalar_t, acc_t>(in.y, in.shortcut, in.mean, in.invstd, in.weight, in.bias);
}

// ------------------------------------------------------------------ the ops, for either device
//
// bn_lif_forward and bn_lif_backward around the kernels of one device: ``Kernels`` (bn_lif.cu:
// CUDA, bn_lif_cpu.cpp: CPU) holds kDevice and two static function templates:
//   forward(View in, spikes, membrane (null unless full_membrane), LIFConst c)
//   backward(View in, BackwardArgs a, y) -> [2, C] float64: the channel sums of dL/dz and of
//     dL/dz·x_hat; it writes a.grad_y (through the batch statistics when a.training) and
//     a.grad_shortcut.

// The backward's incoming gradients (null where absent), outputs and options.
template <typename scalar_t, typename acc_t>
struct BackwardArgs {
  const scalar_t* grad_spikes;
  const acc_t* grad_mem;
  scalar_t* grad_y;
  scalar_t* grad_shortcut;  // null without a shortcut
  bool training, detach_reset;
  tdsnn_lif::LIFConst<acc_t> c;
  tdsnn_lif::Surrogate surrogate;
  acc_t alpha;
};

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor> bn_lif_forward_op(
    const at::Tensor& y_in, const at::Tensor& mean_in, const at::Tensor& invstd_in,
    const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& bias_in,
    const std::optional<at::Tensor>& shortcut_in, bool /*training*/, double tau,
    double v_threshold, double v_reset, bool soft_reset, bool decay_input, bool /*detach_reset*/,
    std::string_view surrogate_name, double alpha, bool full_membrane) {
  check_inputs("bn_lif_forward", y_in, mean_in, invstd_in, weight_in, bias_in, shortcut_in,
               Kernels::kDevice);
  tdsnn_lif::check_params("bn_lif_forward", tau, v_threshold, v_reset, soft_reset, alpha);
  tdsnn_lif::parse_surrogate("bn_lif_forward", std::string(surrogate_name));
  const c10::DeviceGuard guard(y_in.device());
  const Inputs inputs = prepare_inputs(y_in, mean_in, invstd_in, weight_in, bias_in, shortcut_in);
  const at::Tensor& y = inputs.y;
  const at::ScalarType acc_dtype = param_dtype(y.scalar_type());
  at::Tensor spikes = at::empty_like(y);
  at::Tensor membrane = full_membrane ? at::empty_like(y, y.options().dtype(acc_dtype))
                                      : at::empty({0}, y.options().dtype(acc_dtype));
  if (y.numel() == 0) return {spikes, membrane};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "bn_lif_forward",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    Kernels::forward(make_view<scalar_t, acc_t>(inputs), spikes.mutable_data_ptr<scalar_t>(),
                     full_membrane ? membrane.mutable_data_ptr<acc_t>() : nullptr,
                     tdsnn_lif::make_const<acc_t>(tau, v_threshold, v_reset, soft_reset,
                                                  decay_input));
  });
  return {spikes, membrane};
}

template <typename Kernels>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> bn_lif_backward_op(
    const std::optional<at::Tensor>& grad_spikes_in,
    const std::optional<at::Tensor>& grad_membrane_in, const at::Tensor& y_in,
    const at::Tensor& mean_in, const at::Tensor& invstd_in,
    const std::optional<at::Tensor>& weight_in, const std::optional<at::Tensor>& bias_in,
    const std::optional<at::Tensor>& shortcut_in, bool training, double tau, double v_threshold,
    double v_reset, bool soft_reset, bool decay_input, bool detach_reset,
    std::string_view surrogate_name, double alpha) {
  check_inputs("bn_lif_backward", y_in, mean_in, invstd_in, weight_in, bias_in, shortcut_in,
               Kernels::kDevice);
  check_grads("bn_lif_backward", y_in, grad_spikes_in, grad_membrane_in);
  tdsnn_lif::check_params("bn_lif_backward", tau, v_threshold, v_reset, soft_reset, alpha);
  const tdsnn_lif::Surrogate surrogate =
      tdsnn_lif::parse_surrogate("bn_lif_backward", std::string(surrogate_name));
  const c10::DeviceGuard guard(y_in.device());
  const Inputs inputs = prepare_inputs(y_in, mean_in, invstd_in, weight_in, bias_in, shortcut_in);
  const at::Tensor& y = inputs.y;
  const at::ScalarType dtype = y.scalar_type(), acc_dtype = param_dtype(dtype);
  const at::Tensor grad_spikes = optional_like(grad_spikes_in, y, dtype);
  const at::Tensor grad_mem = optional_like(grad_membrane_in, y, acc_dtype);
  at::Tensor grad_y = at::empty_like(y);
  at::Tensor grad_shortcut =
      inputs.shortcut.defined() ? at::empty_like(y) : at::empty({0}, y.options());
  at::Tensor sums = at::zeros({2, y.size(2)}, y.options().dtype(at::kDouble));
  if (y.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "bn_lif_backward", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const BackwardArgs<scalar_t, acc_t> a{
          grad_spikes.defined() ? grad_spikes.const_data_ptr<scalar_t>() : nullptr,
          grad_mem.defined() ? grad_mem.const_data_ptr<acc_t>() : nullptr,
          grad_y.mutable_data_ptr<scalar_t>(),
          inputs.shortcut.defined() ? grad_shortcut.mutable_data_ptr<scalar_t>() : nullptr,
          training,
          detach_reset,
          tdsnn_lif::make_const<acc_t>(tau, v_threshold, v_reset, soft_reset, decay_input),
          surrogate,
          acc_t(alpha)};
      sums = Kernels::backward(make_view<scalar_t, acc_t>(inputs), a, y);
    });
  }
  const at::Tensor totals = sums.to(acc_dtype);
  return {grad_y, totals[1].clone(), totals[0].clone(), grad_shortcut};
}

}  // namespace tdsnn_bn_lif

// What the CPU (bn_lif_cpu.cpp) and CUDA (bn_lif.cu) kernels of the fused batch-norm apply
// (+ shortcut) + multi-step LIF share: the argument checks and the per-channel coefficients.
//
// The op: z = (y - mean[c]) * invstd[c] * weight[c] + bias[c] (+ shortcut), then the LIF of
// lif_common.h over the T steps of z. y is the convolution's output [T, B, C, *] (channel
// dimension 2), dense; the channel of storage offset i within a time step is (i / stride_c) % C
// for every dense non-overlapping layout (contiguous and channels-last alike).

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <optional>

namespace tdsnn_bn_lif {

// The per-channel parameters' dtype for y's: float32 (float64 for float64 y).
inline c10::ScalarType param_dtype(c10::ScalarType y_dtype) {
  return y_dtype == c10::kDouble ? c10::kDouble : c10::kFloat;
}

inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

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

}  // namespace tdsnn_bn_lif

// What the CPU (bn_lif_cpu.cpp) and CUDA (bn_lif.cu) kernels of the fused batch-norm apply
// (+ shortcut) + multi-step LIF share: the argument checks, the per-channel coefficients and
// the view of the storage (View, make_view).
//
// The op: z = (y - mean[c]) * invstd[c] * weight[c] + bias[c] (+ shortcut), then the LIF of
// lif_common.h over the T steps of z. y is the convolution's output [T, B, C, *] (channel
// dimension 2), time-major dense (lif_common.h: channels-last without a copy; the shortcut, the
// incoming gradients and the outputs take y's strides); the channel of storage offset i within
// a time step is (i / stride_c) % C for every dense non-overlapping layout (contiguous:
// stride_c = H·W, channels-last: stride_c = 1).

#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <algorithm>
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

// The storage of one op call: pointers, sizes, and the channel of each storage offset.
template <typename scalar_t, typename acc_t>
struct View {
  const scalar_t* __restrict__ y;
  const scalar_t* __restrict__ shortcut;       // may be null
  const acc_t *mean, *invstd, *weight, *bias;  // null where not given (bn_lif_stats: all)
  int64_t steps, n, stride_c, channels;

  // The channel of storage offset ``i`` within a time step.
  C10_HOST_DEVICE int64_t channel(int64_t i) const { return (i / stride_c) % channels; }

  // The channels of the elements first..first+len into ``ch``: two divisions per block, then
  // a counter (a division per element would cost more than the T steps of a small T).
  void channels_of(int64_t first, int64_t len, int64_t* ch) const {
    int64_t c = channel(first), within = first % stride_c;
    for (int64_t k = 0; k < len; ++k) {
      ch[k] = c;
      if (++within == stride_c) {
        within = 0;
        if (++c == channels) c = 0;
      }
    }
  }

  // scale/shift (and mean/invstd, when asked) of the elements first..first+len, and their
  // channels into ``ch``.
  void coefficients(int64_t first, int64_t len, int64_t* ch, acc_t* scale, acc_t* shift,
                    acc_t* mu = nullptr, acc_t* is = nullptr) const {
    channels_of(first, len, ch);
    for (int64_t k = 0; k < len; ++k) {
      const int64_t c = ch[k];
      const Affine<acc_t> a = channel_affine(mean, invstd, weight, bias, c);
      scale[k] = a.scale;
      shift[k] = a.shift;
      if (mu) mu[k] = mean[c];
      if (is) is[k] = invstd[c];
    }
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

}  // namespace tdsnn_bn_lif

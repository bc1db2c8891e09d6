// Schemas of every tdsnn op, declared once. Device kernels are registered per dispatch key in
// the .cu files (TORCH_LIBRARY_IMPL(tdsnn, CUDA, m)); the CPU implementations, fake (meta)
// functions and autograd formulas are registered from Python in tdsnn/ops/.
//
// Conventions: time-major [T, *] for neuron inputs; pair lists [P, 2] int64; rows [N, M].

#include <torch/library.h>

TORCH_LIBRARY(tdsnn, m) {
  // Multi-step LIF over all T steps of x [T, *] from rest. Returns spikes [T, *] in x's dtype and
  // the membrane for the backward: the charged potential H [T, *] in float32 (float64 for
  // float64 x) when full_membrane or x is float32/float64; else H - v_threshold in x's dtype
  // (float16/bfloat16), rounded so that (H - v_threshold >= 0) is the spike.
  // soft_reset ignores v_reset (V -= v_threshold after a spike, rest at 0). detach_reset,
  // surrogate and alpha only shape the backward; the forward checks them and passes them on.
  m.def(
      "lif_forward(Tensor x, float tau, float v_threshold, float v_reset, bool soft_reset, "
      "bool decay_input, bool detach_reset, str surrogate, float alpha, bool full_membrane) "
      "-> (Tensor spikes, Tensor membrane)");
  // Reverse-time recurrence of the LIF: grad of the input [T, *] in grad_dtype from the saved
  // membrane (as lif_forward returns it: H, or H - v_threshold when float16/bfloat16) and the
  // incoming gradients of spikes and H (either may be absent).
  // surrogate: "atan" | "sigmoid" | "piecewise-quadratic" | "fast-sigmoid"; alpha its sharpness.
  m.def(
      "lif_backward(Tensor? grad_spikes, Tensor? grad_membrane, Tensor membrane, float tau, "
      "float v_threshold, float v_reset, bool soft_reset, bool decay_input, bool detach_reset, "
      "str surrogate, float alpha, ScalarType grad_dtype) -> Tensor");
  // Fused batch-norm apply (+ shortcut) + multi-step LIF over all T steps of the convolution
  // output y [T, B, C, *] (channel dimension 2): z = (y - mean) * invstd * weight + bias
  // (+ shortcut), per channel (mean, invstd, weight, bias [C] in float32, float64 for float64
  // y; weight, bias absent = 1, 0), then the LIF of lif_forward on z from rest. Returns spikes
  // [T, B, C, *] in y's dtype and, when full_membrane, H in float32 (float64) (else an empty
  // [0] tensor). training: mean and invstd are y's batch statistics (biased variance), so the
  // backward differentiates through them; else they are constants (running statistics).
  m.def(
      "bn_lif_forward(Tensor y, Tensor mean, Tensor invstd, Tensor? weight, Tensor? bias, "
      "Tensor? shortcut, bool training, float tau, float v_threshold, float v_reset, "
      "bool soft_reset, bool decay_input, bool detach_reset, str surrogate, float alpha, "
      "bool full_membrane) -> (Tensor spikes, Tensor membrane)");
  // Its backward from the saved y (and shortcut): recomputes z and H, returns the gradients of
  // y (through the batch statistics when training), weight and bias ([C], also when absent) and
  // shortcut (an empty [0] tensor without one).
  m.def(
      "bn_lif_backward(Tensor? grad_spikes, Tensor? grad_membrane, Tensor y, Tensor mean, "
      "Tensor invstd, Tensor? weight, Tensor? bias, Tensor? shortcut, bool training, float tau, "
      "float v_threshold, float v_reset, bool soft_reset, bool decay_input, bool detach_reset, "
      "str surrogate, float alpha) -> (Tensor grad_y, Tensor grad_weight, Tensor grad_bias, "
      "Tensor grad_shortcut)");
  // The batch statistics the op normalises with in training: (mean, biased variance) [C] of
  // y [T, B, C, *] over every dimension but the channel, float32 (float64 for float64 y).
  // CPU only (on CUDA, torch.var_mean).
  m.def("bn_lif_stats(Tensor y) -> (Tensor mean, Tensor var)");
  // out[p] = sum_m x[i_p, m] * y[j_p, m] for rows x, y [N, M] and pairs [P, 2] = (i_p, j_p):
  // Pearson and cosine similarities over (z-scored or normalised) feature rows.
  m.def("pair_similarity(Tensor x, Tensor y, Tensor pairs) -> Tensor");
  m.def(
      "pair_similarity_backward(Tensor grad, Tensor x, Tensor y, Tensor pairs) "
      "-> (Tensor grad_x, Tensor grad_y)");
  // The same dot products on a tile plan (tdsnn.ops.tiles.PairTiles): units [G, U] int64 (the
  // rows tile g reads, -1 pads; U <= 128), local [P, 2] int32 (each pair's two slots in its
  // tile's units, pairs in tile order), offsets [G + 1] int64 (tile g holds pairs
  // offsets[g]:offsets[g+1], at most 1024). out [P] in tile order.
  m.def(
      "pair_similarity_tiled(Tensor x, Tensor y, Tensor units, Tensor local, Tensor offsets) "
      "-> Tensor");
  m.def(
      "pair_similarity_tiled_backward(Tensor grad, Tensor x, Tensor y, Tensor units, "
      "Tensor local, Tensor offsets) -> (Tensor grad_x, Tensor grad_y)");
  // [sum s, sum s^2, sum w s] in float64 over the pairs of a tile plan, s_p the dot product of
  // pair_similarity_tiled and w [P] per-pair weights in tile order (absent: the third is 0).
  // The backward recomputes s_p; no [P] similarities are stored.
  m.def(
      "pair_moments(Tensor x, Tensor y, Tensor units, Tensor local, Tensor offsets, "
      "Tensor? weights) -> Tensor");
  m.def(
      "pair_moments_backward(Tensor grad, Tensor x, Tensor y, Tensor units, Tensor local, "
      "Tensor offsets, Tensor? weights) -> (Tensor grad_x, Tensor grad_y)");
  // Lagged cross-correlogram of spike trains [T, B, N] per pair, unnormalised:
  // CCG[p] = sum_{tau=-W..W} 1/(B (T-|tau|)) sum_b sum_t S_i^b(t) S_j^b(t+tau), W = window.
  m.def("pair_ccg(Tensor spikes, Tensor pairs, int window) -> Tensor");
  m.def("pair_ccg_backward(Tensor grad, Tensor spikes, Tensor pairs, int window) -> Tensor");
  // TDANN's swap proposals in one neighbourhood of m slots, in order: r [m, m] float64 (the
  // units' response Pearson, zero diagonal, contiguous; modified in place: its rows and columns
  // follow the accepted swaps), k [m, m] float64 (the slots' 1/(1 + d), zero diagonal), a, c [S]
  // int64 (distinct slots in [0, m)). Proposal s swaps the units at slots a[s], c[s] when
  // delta = (k[a] - k[c]) . (r[c] - r[a]) + 2 k[a, c] r[a, c] > 0. Returns the permutation
  // [m] int64: perm[i] = the slot whose unit now sits at slot i. CPU only (no CUDA kernel; the
  // swap runs on the CPU whatever the training device); not differentiable.
  m.def("swap_window(Tensor(a!) r, Tensor k, Tensor a, Tensor c) -> Tensor");
}

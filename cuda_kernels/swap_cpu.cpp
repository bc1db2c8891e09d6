// TDANN's swap proposals in one neighbourhood, on the CPU: the sequential loop of
// tdsnn/ops/swap.py:swap_window_reference (equations there). Each proposal (a, c) costs O(m):
//
//   delta = sum_j (k[a, j] - k[c, j]) * (r[c, j] - r[a, j]) + 2 k[a, c] r[a, c]
//
// in float64, summed left to right (numpy's dot in the reference may sum in another order, so
// the two can decide differently only when delta is within rounding of 0). A swap with
// delta > 0 exchanges rows and columns a, c of r in place and the entries a, c of the slot
// permutation. Single-threaded: every decision depends on the swaps before it, and a window is
// small (m <= a few hundred); the caller runs one call per window.

#include <ATen/core/Tensor.h>
#include <ATen/ops/arange.h>
#include <torch/library.h>

#include <cstdint>
#include <utility>

namespace {

void check_inputs(const at::Tensor& r, const at::Tensor& k, const at::Tensor& a,
                  const at::Tensor& c) {
  for (const at::Tensor* t : {&r, &k, &a, &c}) {
    TORCH_CHECK(t->device().is_cpu(), "swap_window: every input must be a CPU tensor, got ",
                t->device());
  }
  TORCH_CHECK(r.dim() == 2 && r.size(0) == r.size(1), "swap_window: r must be square [m, m], got ",
              r.sizes());
  TORCH_CHECK(k.sizes() == r.sizes(), "swap_window: k must have r's shape ", r.sizes(), ", got ",
              k.sizes());
  TORCH_CHECK(r.scalar_type() == at::kDouble && k.scalar_type() == at::kDouble,
              "swap_window: r and k must be float64, got ", r.scalar_type(), " and ",
              k.scalar_type());
  TORCH_CHECK(r.is_contiguous(), "swap_window: r must be contiguous (it is modified in place)");
  TORCH_CHECK(a.dim() == 1 && c.dim() == 1 && a.size(0) == c.size(0),
              "swap_window: a and c must be 1-D of equal length, got ", a.sizes(), " and ",
              c.sizes());
  TORCH_CHECK(a.scalar_type() == at::kLong && c.scalar_type() == at::kLong,
              "swap_window: a and c must be int64, got ", a.scalar_type(), " and ",
              c.scalar_type());
}

// Swap rows and columns a, c of the row-major r [m, m].
inline void swap_rows_cols(double* r, int64_t m, int64_t a, int64_t c) {
  double* ra = r + a * m;
  double* rc = r + c * m;
  for (int64_t j = 0; j < m; ++j) std::swap(ra[j], rc[j]);
  for (int64_t i = 0; i < m; ++i) std::swap(r[i * m + a], r[i * m + c]);
}

at::Tensor swap_window_cpu(at::Tensor r, const at::Tensor& k_in, const at::Tensor& a_in,
                           const at::Tensor& c_in) {
  check_inputs(r, k_in, a_in, c_in);
  const at::Tensor k = k_in.contiguous();
  const at::Tensor a = a_in.contiguous();
  const at::Tensor c = c_in.contiguous();
  const int64_t m = r.size(0);
  const int64_t proposals = a.size(0);
  at::Tensor perm = at::arange(m, a.options());
  double* rp = r.mutable_data_ptr<double>();
  const double* kp = k.const_data_ptr<double>();
  const int64_t* ap = a.const_data_ptr<int64_t>();
  const int64_t* cp = c.const_data_ptr<int64_t>();
  int64_t* pp = perm.mutable_data_ptr<int64_t>();
  for (int64_t s = 0; s < proposals; ++s) {  // bounds first: no access out of the window
    TORCH_CHECK(ap[s] >= 0 && ap[s] < m && cp[s] >= 0 && cp[s] < m && ap[s] != cp[s],
                "swap_window: proposal ", s, " is (", ap[s], ", ", cp[s],
                "); a and c must be distinct slots in [0, ", m, ")");
  }
  for (int64_t s = 0; s < proposals; ++s) {
    const int64_t ia = ap[s], ic = cp[s];
    const double* ka = kp + ia * m;
    const double* kc = kp + ic * m;
    const double* ra = rp + ia * m;
    const double* rc = rp + ic * m;
    double delta = 0.0;
    for (int64_t j = 0; j < m; ++j) delta += (ka[j] - kc[j]) * (rc[j] - ra[j]);
    delta += 2.0 * ka[ic] * ra[ic];
    if (delta > 0.0) {
      swap_rows_cols(rp, m, ia, ic);
      std::swap(pp[ia], pp[ic]);
    }
  }
  return perm;
}

}  // namespace

TORCH_LIBRARY_IMPL(tdsnn, CPU, m) { m.impl("swap_window", &swap_window_cpu); }

"""C++/CUDA sources of the ``torch.ops.tdsnn`` ops, compiled on first use by
:mod:`tdsnn.ops.build` (installed as the package data ``tdsnn.cuda_kernels``)."""

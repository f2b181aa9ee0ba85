"""Independent float64 NumPy references for the kernels; never imports nnxp."""

"""Triton kernels, one module per op family. Imported lazily: arkern works without Triton installed.

On CUDA tensors these are the `triton` backend; on CPU tensors they run only in the Triton interpreter
(TRITON_INTERPRET=1), which is how CI executes them.
"""

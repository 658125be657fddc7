"""The torch-free side of fastervar: reading and checking bundles, running their engines
(onnxruntime sessions or TensorRT plans) in order, the portable sampler's noise, image files and
atomic writes.

Nothing under this package may import torch; a test enforces it.
"""

"""The bundle runner: opens a bundle through the bundle contract and chains its engines
(onnxruntime sessions or TensorRT plans) into images, with the portable sampler's noise.

Nothing under this package may import torch; a test enforces it.
"""

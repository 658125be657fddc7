"""The VAR family (FoundationVision/VAR): the class-conditional transformer, its VQVAE with the
multi-scale residual quantizer, their named configurations, checkpoint I/O and the scale step.

Importing the package needs nothing; `configs` alone needs no torch.
"""

"""Model families (VAR and its VQVAE), checkpoint I/O, the scale-step unit and the reference sampler.

Importing this package needs torch; `configs` alone does not.
"""

"""Model families (VAR with its VQVAE; Infinity with its BSQ VAE and T5 text encoder), checkpoint
I/O, the scale-step unit, its sampling, the one step loop and the CUDA-graph fast path.

Importing this package needs torch; `configs` alone does not.
"""

"""Model families, each one implementation of the scale-step protocol (`protocol.py`), and what
they share: the one step loop (`sampler.py`), sampling settings and samplers (`sampling.py`),
resampling matrices, checkpoint reading, the CUDA-graph fast path and model loading.

One sub-package per family (`var/`, `infinity/`) and one for text encoders (`text/`): a new family
is a new folder implementing the protocol, not edits across the tree. Importing this package
needs nothing; `var.configs` alone needs no torch.
"""

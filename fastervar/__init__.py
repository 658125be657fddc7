"""fastervar: training-free acceleration and compiled deployment for next-scale (VAR-family) generators.

Importing the package never imports torch: the runtime and the profile schema must work on hosts
that only have numpy and onnxruntime.
"""

__version__ = "0.1.0"

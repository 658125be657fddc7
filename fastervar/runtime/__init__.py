"""The torch-free side of fastervar: noise drawing now, engine chaining later.

Nothing under this package may import torch; a test enforces it.
"""

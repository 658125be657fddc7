"""Small neutral helpers every layer may import: atomic files and folders, the portable sampler's
seeded noise, image files and conversion, hashing, and what this machine's CPU can do.

It imports nothing of ours but `fastervar.errors`, and never torch.
"""

"""The Infinity family (FoundationVision/Infinity): the text-conditioned bitwise transformer, its
BSQ VAE, the aspect-ratio schedules, checkpoint I/O and the scale step."""

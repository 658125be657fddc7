"""Training the embedded tiny model (VQVAE, then VAR) and its evaluation classifier on Fashion-MNIST."""

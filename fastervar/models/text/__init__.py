"""Text encoders and prompt batches for the text-conditioned families: a clean-room T5 encoder
that loads Hugging Face folders, and prompts as padded embeddings with their lengths."""

"""CLIP, written here from the architecture (transformers is a test oracle only): the text and
vision towers as Hugging Face folders hold them, their tokenizer and image preprocessing, so a
user's CLIP checkpoint on disk can judge text-to-image models and encode STAR's prompts."""

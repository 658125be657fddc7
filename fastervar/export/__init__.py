"""Export: per-step ONNX graphs with a profile baked in, packed into a bundle the runtime chains."""

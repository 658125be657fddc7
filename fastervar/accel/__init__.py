"""The plug-and-play accelerator: applies a Profile to any model implementing the scale-step unit."""

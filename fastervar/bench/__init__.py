"""`fastervar bench` and `fastervar demo`: every path side by side, and the main job in one command."""

"""Calibration: measure the baseline on sample prompts, then choose a profile from the measurements."""

"""STAR (Davinci-XLab/STAR-T2I): VAR's scale-wise decoder conditioned on CLIP text, with the
sampler model's stable sampling."""

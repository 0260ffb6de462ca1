"""Model compression (Cai et al. 2022, Sec. 2): pruning, quantization, factorization, coding."""

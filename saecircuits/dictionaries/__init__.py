"""Dictionary (SAE) definitions shared by training and inference; `kernels`: the training-step kernels."""

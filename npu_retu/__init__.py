"""npu-retu: SFT-then-RL post-training with a phase monitor, for Ascend NPUs, CUDA GPUs and CPU."""

__version__ = "0.1.0"

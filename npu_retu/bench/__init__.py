"""Every benchmark of ``npu-retu bench``, one module each: they print and save their figures.

* :mod:`~npu_retu.bench.sft`: tokens/s and peak memory of the SFT step;
* :mod:`~npu_retu.bench.rl`: the time split and throughput of the RL step;
* :mod:`~npu_retu.bench.reward`: math-verify verifications per second, in-process and through the pool;
* :mod:`~npu_retu.bench.kernels`: the fused log-prob kernels vs PyTorch, torch.compile and Liger.
"""

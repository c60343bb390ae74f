"""The paper's three experiments in miniature (``npu-retu experiment``): paradigms (§6.1),
the SFT-to-RL transition (§6.2.1) and SFT data properties (§6.2.2)."""

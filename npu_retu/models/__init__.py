"""Models: loading a causal LM (modeling), the named presets for the FLOPs and plan arithmetic
(presets), and the embedded default base model's build and cache (embedded)."""

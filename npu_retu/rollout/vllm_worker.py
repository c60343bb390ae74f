"""Runs inside vLLM's worker: the weight-loading half of ``VLLMRollout.sync_weights``.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``), so its methods run where
the model lives, in this process or in vLLM's engine-core process, called through
``llm.collective_rpc(name, args=...)``. One sync is ``begin_weight_sync``, then
``load_weight_bucket`` once per bucket, then ``finish_weight_sync``: vLLM's in-place reload (its
``reload_weights``) cut into those three parts, so that a large model arrives a bucket at a time. A
layer is rebuilt as soon as all of its weights have arrived; a layer that received none keeps its
weights. vLLM releases without that reload module (before ~0.30, e.g. the 0.23 that vllm-ascend
0.23 pairs with) keep each parameter's weight loader after start-up, so there ``load_weights``
alone copies in place and the begin / finish steps do nothing. Tensors do not survive vLLM's message encoding between processes, so a bucket travels as
safetensors bytes: plain data, nothing in it is executed.
"""

from __future__ import annotations


class WeightSyncExtension:
    """Methods added to vLLM's worker (``self`` is the worker; ``self.model_runner`` holds the model)."""

    def begin_weight_sync(self) -> None:
        """Prepare every layer of the model for an in-place reload."""
        layerwise = _layerwise_reload()
        if layerwise is not None:
            layerwise.initialize_layerwise_reload(self.model_runner.get_model())

    def load_weight_bucket(self, blob: bytes) -> int:
        """Load the named tensors in ``blob`` (safetensors bytes, Hugging Face parameter names); returns
        how many it read. vLLM's ``load_weights`` fuses q/k/v and gate/up and casts to the engine's dtype."""
        from safetensors.torch import load

        tensors = load(blob)
        self.model_runner.get_model().load_weights(weights=tensors.items())
        return len(tensors)

    def finish_weight_sync(self) -> None:
        """Finish the reload (layers that received nothing keep their weights)."""
        layerwise = _layerwise_reload()
        if layerwise is not None:
            layerwise.finalize_layerwise_reload(self.model_runner.get_model(), self.model_config)


def _layerwise_reload():
    """vLLM's layerwise reload module, or None in releases that do not have it."""
    try:
        from vllm.model_executor.model_loader.reload import layerwise
    except ImportError:
        return None
    return layerwise

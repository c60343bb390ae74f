"""Runs inside vLLM's worker: the weight-loading half of ``VLLMRollout.sync_weights``.

vLLM mixes this class into its worker (``LLM(worker_extension_cls=...)``), so its methods run where
the model lives, in this process or in vLLM's engine-core process, called through
``llm.collective_rpc(name, args=...)``. One sync is ``begin_weight_sync``, then
``load_weight_bucket`` once per bucket, then ``finish_weight_sync``: vLLM's in-place reload (its
``reload_weights``) cut into those three parts, so that a large model arrives a bucket at a time. A
layer is rebuilt as soon as all of its weights have arrived; a layer that received none keeps its
weights. vllm-ascend 0.23's own ``NPUWorker`` uses the same reload functions (imported from
``vllm.model_executor.model_loader.reload``) under ``torch.device(self.device)``, as all three
steps here do; a vLLM without that module keeps each parameter's weight loader after start-up, so
there ``load_weights`` alone copies in place and the begin / finish steps do nothing. Tensors do
not survive vLLM's message encoding between processes, so a bucket travels as safetensors bytes:
plain data, nothing in it is executed.
"""

from __future__ import annotations

import contextlib


class WeightSyncExtension:
    """Methods added to vLLM's worker (``self`` is the worker; ``self.model_runner`` holds the model)."""

    def begin_weight_sync(self) -> None:
        """Prepare every layer of the model for an in-place reload."""
        reload = _layerwise_reload()
        if reload is not None:
            with _on_device(self):
                reload.initialize_layerwise_reload(self.model_runner.get_model())

    def load_weight_bucket(self, blob: bytes) -> int:
        """Load the named tensors in ``blob`` (safetensors bytes, Hugging Face parameter names); returns
        how many it read. vLLM's ``load_weights`` fuses q/k/v and gate/up and casts to the engine's dtype."""
        from safetensors.torch import load

        tensors = load(blob)
        with _on_device(self):
            self.model_runner.get_model().load_weights(weights=tensors.items())
        return len(tensors)

    def finish_weight_sync(self) -> None:
        """Finish the reload (layers that received nothing keep their weights)."""
        reload = _layerwise_reload()
        if reload is not None:
            with _on_device(self):
                reload.finalize_layerwise_reload(self.model_runner.get_model(), self.model_config)


def _on_device(worker):
    """``torch.device(worker.device)`` as the default device (the reload builds its meta tensors
    there), or nothing for a worker without one."""
    import torch

    device = getattr(worker, "device", None)
    return torch.device(device) if device is not None else contextlib.nullcontext()


def _layerwise_reload():
    """vLLM's layerwise reload functions (``vllm.model_executor.model_loader.reload``), or None in
    releases that do not have them."""
    try:
        from vllm.model_executor.model_loader import reload
    except ImportError:
        return None
    return reload if hasattr(reload, "initialize_layerwise_reload") else None

"""Test-only fault injection: kill a training process while it writes a checkpoint.

Python imports ``sitecustomize`` at start-up from the first folder on ``sys.path`` that has one, so
every process started with this folder on ``PYTHONPATH`` loads this file: the CLI a test starts,
and the Ray workers and torchrun ranks below it, which inherit the environment. The
``kill_during_save`` fixture (tests/conftest.py) sets that up. Nothing of this is in the package.

With ``NPU_RETU_TEST_KILL_DURING_SAVE=N``, ``npu_retu.trainer.checkpoint.save_checkpoint`` is
wrapped as soon as that module is imported: at step N, rank 0 SIGKILLs itself right after the
model files are in the temporary checkpoint folder and before the trainer state is - the
half-written checkpoint that resume must never pick up (and, with several ranks, a rank that dies
while the others wait for it).
"""

import importlib.abc
import os
import signal
import sys

TARGET_MODULE = "npu_retu.trainer.checkpoint"


def _wrap(module, step: int) -> None:
    save_checkpoint = module.save_checkpoint

    def save_then_die_at_step(run_dir, at_step, write_model, trainer_state, **kwargs):
        ranks = kwargs.get("ranks")
        if at_step == step and (ranks is None or ranks.is_main):

            def write_model_then_die(folder):
                write_model(folder)
                os.kill(os.getpid(), signal.SIGKILL)

            return save_checkpoint(run_dir, at_step, write_model_then_die, trainer_state, **kwargs)
        return save_checkpoint(run_dir, at_step, write_model, trainer_state, **kwargs)

    module.save_checkpoint = save_then_die_at_step


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: lets the other finders find the checkpoint module, then wraps its
    loader so that the module is patched right after it runs."""

    def __init__(self, step: int):
        self.step = step

    def find_spec(self, name, path, target=None):
        if name != TARGET_MODULE:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                exec_module, step = spec.loader.exec_module, self.step

                def exec_then_wrap(module):
                    exec_module(module)
                    _wrap(module, step)

                spec.loader.exec_module = exec_then_wrap
                return spec
        return None


_step = os.environ.get("NPU_RETU_TEST_KILL_DURING_SAVE")
if _step:
    sys.meta_path.insert(0, _WrapOnImport(int(_step)))

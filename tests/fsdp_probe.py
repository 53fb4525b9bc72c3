"""``realchat.cli`` as a launched process runs it, with two test probes (tests/test_fsdp.py).

* ``REALCHAT_PROBE_GATHER=<file>``: just before the trained model is saved, every rank gathers the
  model's full state dict itself, with torch's own ``get_model_state_dict(full_state_dict=True)``
  (not accelerate's or transformers' save path), and rank 0 writes it to ``<file>`` together with
  what each rank held (whether its parameters were DTensor shards, how many elements it had). The test
  compares the saved model against these gathered trained weights.
* ``REALCHAT_PROBE_SLOW_AFTER=<step>``: each optimiser step after ``<step>`` sleeps a second, so a
  test can kill -9 the launch after a checkpoint was written and before the next one.

* ``REALCHAT_PROBE_CPU_FSDP=1``: accelerate 1.16 turns its FSDP plugin on only for GPU-like
  distributed types (``MULTI_GPU``, ``MULTI_NPU``, …) and quietly trains DDP replicas on CPUs
  (``MULTI_CPU``); this marks the CPU launch as FSDP, so the rest runs accelerate's real FSDP2 path
  (``fully_shard`` over a gloo mesh, its gather and its checkpoint files) as on GPUs.

Nothing here changes what is trained or saved.
"""

from __future__ import annotations

import os
import sys
import time


def _install() -> None:
    import realchat.steps.sft as sft
    import realchat.training.saving as saving

    if os.environ.get("REALCHAT_PROBE_CPU_FSDP"):
        from accelerate.state import AcceleratorState, PartialState
        from accelerate.utils import DistributedType

        original_init = AcceleratorState.__init__

        def init(self, *a, fsdp_plugin=None, **kw):
            original_init(self, *a, fsdp_plugin=fsdp_plugin, **kw)
            if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
                self.distributed_type = DistributedType.FSDP
                if self._mixed_precision != "no":
                    fsdp_plugin.set_mixed_precision(self._mixed_precision)
                self.fsdp_plugin = fsdp_plugin
                PartialState._shared_state["distributed_type"] = self.distributed_type  # as accelerate does

        AcceleratorState.__init__ = init
    gather_to = os.environ.get("REALCHAT_PROBE_GATHER")
    slow_after = os.environ.get("REALCHAT_PROBE_SLOW_AFTER")
    if gather_to:
        original_save = saving.save_trained

        def save_trained(trainer, out, **kw):
            import torch
            import torch.distributed as dist
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            from torch.distributed.tensor import DTensor

            model = trainer.model
            params = list(model.parameters())
            held = {"sharded": all(isinstance(p, DTensor) for p in params),
                    "local_elements": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
                    "full_elements": sum(p.numel() for p in params),
                    "fsdp": bool(trainer.is_fsdp_enabled), "wrapped": type(trainer.model_wrapped).__name__,
                    "distributed_type": str(trainer.accelerator.distributed_type)}
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            everyone = [None] * dist.get_world_size() if dist.is_initialized() else [held]
            if dist.is_initialized():
                dist.all_gather_object(everyone, held)
            if trainer.is_world_process_zero():
                checkpoints = sorted(str(f.relative_to(kw["scratch"] / "checkpoints")) for f in kw["scratch"].glob("checkpoints/*/*"))
                torch.save({"state_dict": {k: v.detach().clone() for k, v in full.items()}, "ranks": everyone,
                            "checkpoint_files": checkpoints}, gather_to)
            return original_save(trainer, out, **kw)

        saving.save_trained = save_trained
    if slow_after:
        from transformers import TrainerCallback

        class Slow(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step > int(slow_after):
                    time.sleep(1.0)

        original_train = sft.train_sft

        def train_sft(*a, callbacks=None, **kw):
            return original_train(*a, callbacks=[*(callbacks or []), Slow()], **kw)

        sft.train_sft = train_sft


if __name__ == "__main__":
    _install()
    from realchat.cli import app

    sys.argv[0] = "realchat"
    app()

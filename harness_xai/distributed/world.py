"""The ranks of a distributed run (``torchrun`` / ``accelerate launch``) and their messages.

``World.detect()`` — called by every rank at the same point, right after lm-eval's evaluation:
1. no ``torch.distributed`` process group, or one process: a one-rank world (no messages);
2. otherwise rank and size come from the default process group (set up by accelerate inside
   lm-eval's HFLM; if a launcher set ``WORLD_SIZE`` but nobody initialized the group, it is
   initialized here from the environment with gloo);
3. control messages (the plan, the per-rank outcomes) are Python objects sent over a gloo
   group: the default group when it is gloo, else a new gloo group on the same ranks — so they
   never go through NCCL, whatever the model's devices.
``prepare_launch(lm)`` (before lm-eval computes anything): refuses tensor-parallel models
(``tp_plan``: every rank would have to run every case together; not supported), then
``enable_cpu_data_parallel(lm)``: lm-eval's HFLM only shards the evaluation when it counts more
than one GPU (``torch.cuda.device_count()``); with Accelerate in multi-CPU mode
(``ACCELERATE_USE_CPU=true``, gloo) it evaluates every request on every rank. When the HFLM holds
such a multi-process accelerator, give it the accelerator's rank and world size, so lm-eval's
own sharding, padding and gathering run exactly as on GPUs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

#: gloo timeout for control messages: followers wait while rank 0 builds the contrast cases
TIMEOUT = timedelta(weeks=52)  # as lm-eval's own process group; launchers stop dead workers


@dataclass
class World:
    """This process's place in the run: ``rank`` of ``size``; rank 0 leads."""

    rank: int = 0
    size: int = 1
    group: object | None = field(default=None, repr=False)  # gloo process group (size > 1)
    plan_sent: bool = False  # the leader has sent the plan (followers are past waiting for it)

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls) -> World:
        import torch.distributed as dist

        if not dist.is_available():
            return cls()
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "MASTER_ADDR" not in os.environ:
                return cls()
            dist.init_process_group(backend="gloo", timeout=TIMEOUT)
        size = dist.get_world_size()
        if size <= 1:
            return cls()
        backend = str(dist.get_backend())
        group = None if backend == "gloo" else dist.new_group(backend="gloo", timeout=TIMEOUT)
        return cls(rank=dist.get_rank(), size=size, group=group)

    # -- messages (every rank must make the same calls in the same order) ------------------
    def scatter(self, items: list | None) -> object:
        """Rank 0 sends ``items[r]`` to rank r; every rank returns its own item."""
        import torch.distributed as dist

        out = [None]
        dist.scatter_object_list(out, items if self.leader else None, src=0,
                                 group=self.group)
        return out[0]

    def gather(self, item) -> list | None:
        """Every rank's ``item`` on rank 0 (a list by rank); None elsewhere."""
        import torch.distributed as dist

        out = [None] * self.size if self.leader else None
        dist.gather_object(item, out, dst=0, group=self.group)
        return out

    def all_gather(self, item) -> list:
        import torch.distributed as dist

        out = [None] * self.size
        dist.all_gather_object(out, item, group=self.group)
        return out

    @contextmanager
    def leading(self) -> Iterator[World]:
        """Rank 0's side of a run: if it fails before sending the plan, the other ranks get
        an empty plan and stop instead of waiting for one."""
        try:
            yield self
        except BaseException:
            if self.size > 1 and self.leader and not self.plan_sent:
                self.plan_sent = True
                try:
                    self.scatter([None] * self.size)
                except Exception:  # the original error matters more
                    pass
            raise


def prepare_launch(lm) -> None:
    """Checks and settings for a (possibly launched) attributed run; see module docstring."""
    from harness_xai.errors import UserError

    if (getattr(getattr(lm, "model", None), "tp_size", None) or 1) > 1:
        raise UserError("--attribute does not support tensor-parallel models (tp_plan): spread "
                        "the layers with --model_args parallelize=True, or run data-parallel "
                        "with accelerate launch / torchrun.")
    enable_cpu_data_parallel(lm)


def enable_cpu_data_parallel(lm) -> bool:
    """Let lm-eval shard its evaluation over Accelerate's CPU processes (module docstring)."""
    accelerator = getattr(lm, "accelerator", None)
    if accelerator is None or getattr(lm, "_world_size", 1) != 1:
        return False
    if accelerator.num_processes <= 1 or accelerator.device.type != "cpu":
        return False
    lm._rank, lm._world_size = accelerator.process_index, accelerator.num_processes
    if lm._rank == 0:
        print(f"harness-xai: lm-eval evaluates data-parallel on {lm._world_size} CPU processes",
              file=sys.stderr, flush=True)
    return True

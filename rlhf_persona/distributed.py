"""Rank guards for several processes (accelerate launch): one main process, data-parallel training.

Under ``accelerate launch --num_processes N`` every process runs the same command. The main
process alone collects feedback, writes the store, segments, trains the reward model, evaluates,
writes files and logs to W&B; at each round's policy stage it hands the training inputs to the
other processes (``share``), and every process trains the same adapters on its share of each
batch (TRL's trainers and PPO's accelerator wrap the model in DDP, so gradients are averaged).
Without a launcher there is one process, it is the main one, and nothing here costs anything.

On a CPU the processes talk over gloo (``PartialState(cpu=True)``), which is how the tests run
two processes on a laptop; on GPUs over NCCL.
"""

from __future__ import annotations

import functools
import os


@functools.lru_cache(maxsize=1)
def state():
    """accelerate's process state; CPU processes use gloo. Created on first use."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def launched() -> bool:
    """True under a multi-process launcher (torchrun / accelerate launch set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return state().num_processes if launched() else 1


def is_main() -> bool:
    """The process that collects, writes and logs (always True without a launcher)."""
    return state().is_main_process if launched() else True


def rank() -> int:
    return state().process_index if launched() else 0


def local_device(device: str) -> str:
    """``cuda`` → this process's own GPU (``cuda:LOCAL_RANK``) under a launcher; else as given."""
    if device == "cuda" and launched():
        return f"cuda:{state().local_process_index}"
    return device


def barrier() -> None:
    """Wait until every process gets here (no-op on one process)."""
    if launched():
        state().wait_for_everyone()


def share(obj=None):
    """The main process's ``obj`` on every process (pickled over the process group); returns
    ``obj`` unchanged on one process. Every process must call it, in the same order."""
    if not launched():
        return obj
    import torch.distributed as dist

    state()  # the process group exists before the broadcast
    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]

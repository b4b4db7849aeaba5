"""Where training randomness comes from, per process: reproducible, different on every rank, exact on resume.

- The draws of a training step (t, eps, the condition-dropout mask) come from a generator seeded by
  (seed, rank, step, micro-batch): every rank of a DDP job draws its own, a rerun draws the same, and a resumed
  run continues exactly, whatever happened to the global RNGs in between.
- The global RNGs (horizontal flips in the data pipeline, dropout inside the UNet) are seeded per rank at the start
  of fit, and every rank's states -- CPU, every CUDA device, numpy, Python -- are saved in checkpoints and restored
  on resume by the rank that saved them: `RandomStatePersistence`, a callback rcdm-train always adds.
"""

from __future__ import annotations

import io
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn


def mixed_seed(*parts: int) -> int:
    """A 63-bit seed mixing the integers `parts` (numpy's SeedSequence: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_generator(seed: int, rank: int, step: int, micro_batch: int, device: torch.device,
                   stream: int = 0) -> torch.Generator:
    """The generator of one micro-batch's draws (t, noise, condition-dropout mask); `stream` 1: validation."""
    return torch.Generator(device=device).manual_seed(mixed_seed(seed, rank, step, micro_batch, stream))


def seed_process(seed: int, rank: int) -> int:
    """Seed this process's global RNGs (torch on every device, numpy, Python) for `rank`.

    Not `seed_everything`: it would also set PL_GLOBAL_SEED, from which Lightning seeds the DistributedSampler's
    shuffle -- which must be the same on every rank, or the ranks' shares of the data overlap. DataLoader workers
    derive their seeds from this process's torch RNG and their rank.
    """
    process_seed = mixed_seed(seed, rank) % (2**32)  # numpy's global RNG takes 32-bit seeds
    random.seed(process_seed)
    np.random.seed(process_seed)
    torch.manual_seed(process_seed)  # CPU and every CUDA device
    return process_seed


def capture_rng_states() -> dict[str, Any]:
    """This process's global RNG states as tensors and plain numbers (checkpoints load with weights_only=True)."""
    kind, keys, position, has_gauss, cached_gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(keys.copy()), position, has_gauss, cached_gauss],
        "python": random.getstate(),
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Undo `capture_rng_states`: the next draws continue where the saved process left off."""
    torch.set_rng_state(states["torch"])
    cuda_states = states.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])
    kind, keys, position, has_gauss, cached_gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy(), position, has_gauss, cached_gauss))
    version, state, gauss = states["python"]
    random.setstate((version, tuple(state), gauss))


def gather_rng_states(world_size: int) -> list[dict[str, Any]]:
    """Every rank's `capture_rng_states()`, in rank order (a collective: every rank must call it)."""
    states = capture_rng_states()
    if world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [states]
    # Sent as torch.save bytes: all_gather_object's own pickling of tensors fails on unpickling in torch 2.13
    # ("UntypedStorage has no attribute dtype").
    buffer = io.BytesIO()
    torch.save(states, buffer)
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in gathered]


class RandomStatePersistence(L.Callback):
    """Seeds every rank's global RNGs when fit starts, saves all ranks' states in checkpoints, restores them on resume.

    Not optional (rcdm-train adds it whatever `callbacks:` holds): without it every DDP rank would flip and drop out
    alike (Lightning seeds them all with the same seed) and a resumed run would silently diverge.

    Rank r's global RNGs start from `seed_process(seed, r)`, with the seed the module draws its noise from
    (`pl_module.seed`), so the run's one seed is stated once.
    """

    # The checkpoint's top-level key: checkpoints written before this callback existed keep resuming exactly.
    CHECKPOINT_KEY = "rng_states"

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            seed_process(int(pl_module.seed), trainer.global_rank)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A collective: Lightning calls this hook on every rank, and only rank 0 writes the file.
        checkpoint[self.CHECKPOINT_KEY] = {"ranks": gather_rng_states(trainer.world_size)}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(self.CHECKPOINT_KEY)
        if states is None:
            return
        ranks = states.get("ranks", [states])   # [states]: written before per-rank states
        if len(ranks) == trainer.world_size:
            restore_rng_states(ranks[trainer.global_rank])
        else:
            rank_zero_warn(f"the checkpoint holds the random states of {len(ranks)} process(es) and this run "
                           f"has {trainer.world_size}: flips and dropout restart from the seed (the "
                           "diffusion draws still continue exactly)")

"""Features of an evaluation set computed across ranks and gathered in the set's order.

Batches are fixed by the set alone (consecutive runs of `batch_size` items) and dealt to the ranks in turn, so
every item is computed in exactly the batch it would be in on one process: the gathered array equals the
one-process array bit for bit (on the same kind of device with the same thread count). A rank left short by
an uneven split recomputes its first batch to keep step with the others (a collective needs equal shapes);
those rows, and the rows that fill the last partial batch, are marked as padding and dropped on gathering.

What is computed is a function of a batch: video embeddings, caption embeddings, feature maps for probes,
segmentation scores (feature maps: `trajtok.models.feature_maps`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from trajtok.distributed import get_rank, get_world_size

Compute = Callable[[Any], torch.Tensor | tuple[torch.Tensor, ...]]


def rank_batches(num_items: int, batch_size: int, rank: int, world_size: int) -> list[tuple[range, bool]]:
    """This rank's batches as (item range, is padding); every rank gets the same number of batches."""
    if num_items < 1 or batch_size < 1:
        raise ValueError(f"need items and a positive batch size, got {num_items} items, batch {batch_size}")
    batches = [range(start, min(start + batch_size, num_items)) for start in range(0, num_items, batch_size)]
    mine = [(batch, False) for batch in batches[rank::world_size]]
    per_rank = math.ceil(len(batches) / world_size)
    return mine + [(batches[0], True)] * (per_rank - len(mine))


def compute_in_batches(
    data: Dataset | Sequence,
    compute: Compute,
    batch_size: int,
    num_workers: int = 0,
    desc: str = "features",
) -> np.ndarray | tuple[np.ndarray, ...]:
    """`compute` over every item of `data`, split across ranks; every rank returns the whole (N, ...) array.

    `compute` takes a collated batch (a dict of stacked tensors, or a list of strings) and returns a tensor
    whose first axis is the batch, or a tuple of such tensors (then a tuple of arrays comes back: several
    things computed in one pass over the data); it runs without gradients.
    """
    rank, world_size = get_rank(), get_world_size()
    batches = rank_batches(len(data), batch_size, rank, world_size)
    loader = DataLoader(data, batch_sampler=[list(b) for b, _ in batches], num_workers=num_workers)
    rows: list[tuple[torch.Tensor, ...]] = []
    indices = []
    single = True
    for inputs, (batch, padding) in zip(tqdm(loader, desc=desc, unit="batch", disable=rank != 0), batches):
        with torch.no_grad():
            out = compute(inputs)
        single = isinstance(out, torch.Tensor)
        outs = (out,) if single else tuple(out)
        if any(o.shape[0] != len(batch) for o in outs):
            raise ValueError(f"{desc}: a batch of {len(batch)} gave {[o.shape[0] for o in outs]} rows")
        filler = batch_size - len(batch)  # equal rows on every rank, whatever the last batch holds
        rows.append(tuple(torch.cat([o, o[:1].expand(filler, *o.shape[1:])]) if filler else o for o in outs))
        indices.append(torch.tensor([-1 if padding else i for i in batch] + [-1] * filler))
    gathered = tuple(
        _gather(torch.cat(part), torch.cat(indices).to(part[0].device), len(data)) for part in zip(*rows)
    )
    return gathered[0] if single else gathered


def _gather(rows: torch.Tensor, indices: torch.Tensor, total: int) -> np.ndarray:
    """Every rank's rows put at their indices (padding, index -1, dropped): the full array on every rank."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        if dist.get_backend() == "nccl":  # NCCL moves device tensors only
            rows, indices = rows.cuda(), indices.cuda()
        world = dist.get_world_size()
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_indices = [torch.empty_like(indices) for _ in range(world)]
        dist.all_gather(all_rows, rows.contiguous())
        dist.all_gather(all_indices, indices)
        rows, indices = torch.cat(all_rows), torch.cat(all_indices)
    keep = indices >= 0
    out = torch.empty((total, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    out[indices[keep]] = rows[keep]
    if int(keep.sum()) != total:
        raise RuntimeError(f"gathered {int(keep.sum())} rows for {total} items")
    return out.cpu().numpy()

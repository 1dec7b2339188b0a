"""Variable-length sequences packed into one: only valid tokens enter the transformer.

A TrajViT2 clip fills 10-30 of its K*n token slots; padded, a ViT-L runs every slot (129 at paper scale)
and throws most of it away. Packed, the valid tokens of the whole batch are one (S, W) sequence: norms,
projections and MLPs (almost all of a ViT-L's FLOPs at these lengths) run on S rows, and attention stays
inside each clip:
- on CUDA in half precision, flash attention over cumulative sequence lengths
  (`torch.nn.attention.varlen.varlen_attn`), no padding at all;
- elsewhere (CPU, fp32, or a torch without it) attention alone re-pads to the batch's longest clip, not to
  K*n, and passes a key-padding mask to SDPA.
Building the packing needs the number of valid tokens on the host: one synchronisation per forward. Shapes
change from step to step, which DeepSpeed ZeRO does not mind (it partitions parameters, not activations);
`torch.compile` would need `dynamic=True` for it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Packing:
    """Where the valid positions of a (B, L) mask go in the packed (S,) sequence, and back."""

    index: torch.Tensor  # (S,) long: flat position b*L + l of each packed row
    sequence: torch.Tensor  # (S,) long: b of each packed row
    slot: torch.Tensor  # (S,) long: its position within its sequence
    cu_seqlens: torch.Tensor  # (B + 1,) int32: cumulative lengths
    batch: int
    length: int  # L, the padded length
    longest: int  # the longest sequence

    @classmethod
    def from_mask(cls, mask: torch.Tensor) -> Packing:
        """`mask` (B, L) bool, True = valid; valid positions keep their order."""
        batch, length = mask.shape
        lengths = mask.sum(dim=1)
        index = mask.reshape(-1).nonzero().squeeze(1)
        sequence = index // length
        starts = torch.cumsum(lengths, 0) - lengths
        slot = torch.arange(index.numel(), device=mask.device) - starts[sequence]
        cu_seqlens = F.pad(torch.cumsum(lengths, 0), (1, 0)).to(torch.int32)
        return cls(index, sequence, slot, cu_seqlens, batch, length, int(lengths.max()) if batch else 0)

    def pack(self, padded: torch.Tensor) -> torch.Tensor:
        """(B, L, ...) -> (S, ...)."""
        return padded.reshape(self.batch * self.length, *padded.shape[2:])[self.index]

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """(S, ...) -> (B, L, ...), zeros at the invalid positions."""
        out = packed.new_zeros(self.batch * self.length, *packed.shape[1:])
        return out.index_copy(0, self.index, packed).reshape(self.batch, self.length, *packed.shape[1:])

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
        """Projected (S, D) queries, keys and values -> (S, D), each row attending within its sequence."""
        rows, dim = q.shape
        q, k, v = (t.reshape(rows, heads, dim // heads) for t in (q, k, v))
        if _flash_varlen_runs(q):
            from torch.nn.attention.varlen import varlen_attn

            cu, longest = self.cu_seqlens, self.longest
            return varlen_attn(q, k, v, cu, cu, longest, longest).reshape(rows, dim)
        shape = (self.batch, self.longest, heads, dim // heads)
        padded = [t.new_zeros(shape).index_put((self.sequence, self.slot), t) for t in (q, k, v)]
        q, k, v = (t.transpose(1, 2) for t in padded)  # (B, heads, longest, head_dim)
        lengths = self.cu_seqlens[1:] - self.cu_seqlens[:-1]
        keys = torch.arange(self.longest, device=q.device)[None, :] < lengths[:, None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys[:, None, None, :])
        return out.transpose(1, 2)[self.sequence, self.slot].reshape(rows, dim)


def _flash_varlen_runs(q: torch.Tensor) -> bool:
    if not q.is_cuda or q.dtype not in (torch.float16, torch.bfloat16):
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return True

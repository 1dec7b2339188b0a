"""Token merging (ToMe, Bolya et al., ICLR 2023) on ViT3D: the token-merging baseline TrajViT2 must beat.

Trajectory tokens claim accuracy at the cost of the best token-reduction methods, so the baseline is ViT3D
whose tubelet tokens are merged as it goes. In every block, after attention, the tokens are dealt
alternately into two sets; each token of the first set finds its most similar token of the second (cosine
of the attention keys, averaged over heads) and the r most similar pairs are merged into their
size-weighted mean. A merged token stands for `size` tubelets and attention adds log(size) to its scores
(proportional attention), so merging changes how much a token counts, not what the clip sums to. CLS is
never merged; r is capped at half of the mergeable tokens of a block. The weights are the plain
transformer's: a trained ViT3D runs merged without retraining, and r = 0 gives exactly the same outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trajtok.models.sizes import TransformerSize
from trajtok.models.transformer import Transformer, TransformerBlock


def merges_at(tokens: int, r: int) -> int:
    """Pairs merged in a block entered by `tokens` tokens besides CLS."""
    return min(r, tokens // 2)


def tokens_per_block(tokens: int, depth: int, r: int) -> list[int]:
    """Tokens (CLS not counted) entering each of `depth` blocks when each block merges r pairs."""
    counts = []
    for _ in range(depth):
        counts.append(tokens)
        tokens -= merges_at(tokens, r)
    return counts


def r_for_budget(tokens: int, depth: int, budget: float) -> int:
    """The smallest r whose mean tokens per block is at most `budget` (0 when no merging is needed).

    "Equal token budget" compares models by the mean number of tokens their transformer blocks process,
    which is what sets the transformer's cost. Merging at most half of the tokens per block bounds how low
    the mean can go; below that bound this returns the r that merges the most, `tokens // 2`.
    """

    def mean_tokens(r: int) -> float:
        return sum(tokens_per_block(tokens, depth, r)) / depth

    low, high = 0, tokens // 2
    while low < high:  # the mean falls as r grows
        middle = (low + high) // 2
        if mean_tokens(middle) <= budget:
            high = middle
        else:
            low = middle + 1
    return low


def _merge_plan(keys: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bipartite soft matching on keys (B, 1 + N, d), CLS first: (kept, merged, partner) index tensors.

    `kept` (B, A - r) and `merged` (B, r) index the first set (even positions), `partner` (B, r) the second
    set's token each merged one joins. Kept tokens stay in their original order, so CLS stays first.
    """
    with torch.no_grad():
        keys = F.normalize(keys.float(), dim=-1)
        similarity = keys[:, ::2] @ keys[:, 1::2].transpose(1, 2)
        similarity[:, 0] = float("-inf")  # CLS never merges
        best, partner = similarity.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)
        merged, kept = order[:, :r], order[:, r:].sort(dim=-1).values
        return kept, merged, partner.gather(1, merged)


def _merge(
    x: torch.Tensor, size: torch.Tensor, kept: torch.Tensor, merged: torch.Tensor, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Size-weighted merge of states (B, L, W) with their sizes (B, L, 1) -> (B, L - r, W), (B, L - r, 1)."""

    def combine(values: torch.Tensor) -> torch.Tensor:
        first, second = values[:, ::2], values[:, 1::2]
        width = values.shape[-1]
        stay = first.gather(1, kept[..., None].expand(-1, -1, width))
        leave = first.gather(1, merged[..., None].expand(-1, -1, width))
        second = second.scatter_add(1, partner[..., None].expand(-1, -1, width), leave)
        return torch.cat([stay, second], dim=1)

    total = combine(size)
    return combine(x * size.to(x.dtype)) / total.to(x.dtype), total


class ToMeTransformer(Transformer):
    """The shared transformer with r token pairs merged per block; same parameters, fewer tokens.

    Returns states (B, 1 + L', W) with CLS first, L' = the tokens left after the last block.
    """

    def __init__(self, size: TransformerSize, r: int):
        super().__init__(size)
        if r < 0:
            raise ValueError(f"tokens merged per block must be >= 0, got {r}")
        self.r = r
        self.heads = size.heads

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None:
            raise ValueError("token merging works on unpadded tokens (vit3d); got a padding mask")
        batch = tokens.shape[0]
        x = torch.cat([self.cls.expand(batch, -1, -1).to(tokens.dtype), tokens], dim=1)
        size = None  # every token is one tubelet until the first merge
        for block in self.blocks:
            x, size = self._block(block, x, size)
        return self.norm(x)

    def _block(
        self, block: TransformerBlock, x: torch.Tensor, size: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One pre-norm block with proportional attention, merging after attention as ToMe does."""
        batch, length, width = x.shape
        normed = block.norm_attn(x)
        q = block.attn.to_q(normed)
        k, v = block.attn.to_kv(normed).chunk(2, dim=-1)
        q, k, v = (t.reshape(batch, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        bias = None if size is None else size.log().to(q.dtype).transpose(1, 2)[:, None]  # (B, 1, 1, L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        x = x + block.attn.proj(out.transpose(1, 2).reshape(batch, length, width))
        r = merges_at(length - 1, self.r)
        if r:
            if size is None:
                size = torch.ones(batch, length, 1, device=x.device)
            x, size = _merge(x, size, *_merge_plan(k.mean(dim=1), r))
        return x + block.mlp(block.norm_mlp(x)), size

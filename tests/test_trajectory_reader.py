"""The TrajTok connector: a trained segmenter's trajectories read another model's features (TrajAdapter's and
a VLM's mechanism)."""

from __future__ import annotations

import pytest
import torch
from exported_runs import write_weights
from torch import nn

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.registry import build_model
from trajtok.models.segmenter import Segmentation
from trajtok.models.trajectory_encoder import TrajectoryEncoder
from trajtok.models.trajectory_reader import (
    ForeignTrajectories,
    TrajectoryReader,
    TrajTokConnector,
    load_segmenting_model,
    resize_to_grid,
    trajectories_on_grid,
)

torch.set_num_threads(1)
QUERY_DIM = 6


class PaintedSegmenter(nn.Module):
    """A segmenter whose answer is painted into the frames: channel 0 > 0.5 marks the object, which goes to
    query `channel 1`'s value (one per window: each window numbers its trajectories its own way), the rest to
    the next query. Pixel grid = frame grid; a window's queries are its frames' mean colour per query."""

    registry_name = "segmenter"

    def __init__(self, num_queries: int = 4):
        super().__init__()
        self.num_queries = num_queries

    def segment(self, frames: torch.Tensor) -> tuple[None, Segmentation]:
        rows, time, _, height, width = frames.shape
        inside = frames[:, :, 0] > 0.5  # (rows, T, H, W)
        object_query = frames[:, 0, 1, 0, 0].long()  # (rows,)
        ids = torch.where(inside, object_query[:, None, None, None], (object_query + 1)[:, None, None, None])
        ids = ids % self.num_queries
        logits = nn.functional.one_hot(ids.flatten(1), self.num_queries).float() * 5.0
        queries = torch.randn(rows, self.num_queries, QUERY_DIM)
        hard = logits.argmax(-1)
        present = torch.zeros(rows, self.num_queries, dtype=torch.bool).scatter_(1, hard, True)
        return None, Segmentation(logits, logits.softmax(-1), hard, present, (time, height, width), queries)


def crossing_clip(frames: int = 16, size: int = 8, window: int = 8, first_query: list[int] | None = None):
    """A square moving right through every frame, across window boundaries; each window numbers it
    `first_query[w]` (its background the next query)."""
    clip = torch.zeros(1, frames, 3, size, size)
    for t in range(frames):
        x = t * (size - 3) // (frames - 1)
        clip[0, t, 0, 2:5, x : x + 3] = 1.0
    for w, query in enumerate(first_query or [0] * (frames // window)):
        clip[0, w * window : (w + 1) * window, 1] = float(query)
    return clip


def test_resize_averages_logits_under_a_coarser_cell_before_the_argmax():
    # four pixels in a row: three lean slightly to query 1, one strongly to query 0; one cell holds them
    logits = torch.tensor([[5.0, 0.0, 0.0, 0.0], [0.0, 0.1, 0.1, 0.1]]).view(1, 2, 1, 1, 4)
    assert resize_to_grid(logits, (1, 1, 1)).argmax(dim=1).item() == 0  # the mean, not the majority
    assert resize_to_grid(logits, (1, 1, 2)).argmax(dim=1).flatten().tolist() == [0, 1]
    grown = resize_to_grid(torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).view(1, 2, 1, 1, 2), (2, 1, 4))
    assert grown.shape == (1, 2, 2, 1, 4) and grown.argmax(dim=1)[0, 0, 0].tolist() == [0, 0, 1, 1]


def test_trajectories_land_on_the_foreign_grid_per_window():
    segmenter = PaintedSegmenter(num_queries=4)
    clip = crossing_clip(first_query=[0, 2])
    found = trajectories_on_grid(segmenter, clip, (4, 4, 4), chunk_frames=8)  # vit3d-like: T/2, H/2
    assert found.ids.shape == (1, 64) and found.queries.shape == (1, 8, QUERY_DIM)
    ids = found.ids.view(4, 4, 4)
    # window 0 (foreign frames 0-1) uses slots 0-3, window 1 (frames 2-3) slots 4-7: 2 trajectories each
    assert set(ids[:2].unique().tolist()) == {0, 1} and set(ids[2:].unique().tolist()) == {6, 7}
    assert found.present[0].tolist() == [True, True, False, False, False, False, True, True]
    with pytest.raises(ValueError, match="do not map"):
        trajectories_on_grid(segmenter, clip, (3, 4, 4), chunk_frames=8)


@pytest.mark.parametrize("queries", [[0, 2], [3, 1], [1, 1]])
def test_a_trajectory_crossing_a_window_boundary_keeps_one_identity(queries: list[int]):
    segmenter = PaintedSegmenter(num_queries=4)
    clip = crossing_clip(first_query=queries)
    torch.manual_seed(0)
    apart = trajectories_on_grid(segmenter, clip, (16, 8, 8), chunk_frames=8)
    torch.manual_seed(0)
    linked = trajectories_on_grid(segmenter, clip, (16, 8, 8), chunk_frames=8, link_iou=0.5)
    assert apart.present.sum().item() == 4 and linked.present.sum().item() == 2
    inside = (clip[0, :, 0] > 0.5).flatten()
    object_slots, background_slots = linked.ids[0, inside].unique(), linked.ids[0, ~inside].unique()
    assert len(object_slots) == 1 and len(background_slots) == 1  # one identity each, in both windows
    # a linked trajectory's query is the mean of its windows' queries
    first, second = apart.ids[0, inside][0], apart.ids[0, inside][-1]
    expected = (apart.queries[0, first] + apart.queries[0, second]) / 2
    assert torch.allclose(linked.queries[0, object_slots[0]], expected)


def reader(n: int = 2, feature_dim: int = 10, packed: bool = True) -> TrajectoryReader:
    encoder = TrajectoryEncoder(
        16, 1, 2, train_tokens_per_trajectory=(n,), eval_tokens_per_trajectory=n, packed=packed
    )
    return TrajectoryReader(feature_dim, QUERY_DIM, encoder, out_dim=12).eval()


def random_trajectories(batch: int, grid: tuple[int, int, int], slots: int, seed: int) -> ForeignTrajectories:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, slots - 1, (batch, grid[0] * grid[1] * grid[2]), generator=generator)  # last empty
    return ForeignTrajectories.from_ids(ids, torch.randn(batch, slots, QUERY_DIM, generator=generator), grid)


@pytest.mark.parametrize("packed", [True, False])
def test_a_trajectory_reads_only_its_own_foreign_features(packed: bool):
    torch.manual_seed(0)
    module, grid, n = reader(n=2, packed=packed), (2, 4, 4), 2
    trajectories = random_trajectories(2, grid, slots=5, seed=1)
    features = torch.randn(2, *grid, 10)
    with torch.no_grad():
        tokens, mask = module(features, trajectories)
        assert tokens.shape == (2, 5 * n, 12) and mask.shape == (2, 5 * n)
        assert mask.view(2, 5, n).all(dim=2).tolist() == trajectories.present.tolist()
        changed = features.clone()
        owned = (trajectories.ids == 2).view(2, *grid)
        changed[owned] += 3.0  # only trajectory 2's features move
        moved = (module(changed, trajectories)[0] - tokens).abs().amax(dim=-1).view(2, 5, n)
    assert (moved[:, 2] > 1e-3).all()
    others = [0, 1, 3]
    assert (moved[:, others] < 1e-5).all()


def test_reader_checks_the_grid():
    trajectories = random_trajectories(1, (2, 4, 4), slots=3, seed=0)
    with pytest.raises(ValueError, match="not on the grid"):
        reader()(torch.randn(1, 2, 4, 5, 10), trajectories)


def tiny_segmenter(tmp_path, name: str = "segmenter") -> nn.Module:
    return load_segmenting_model(str(write_weights(tmp_path / name, name)), "eval.probe.segmenter")


def test_connector_trains_its_segmenter_only_when_asked(tmp_path):
    frames, features = torch.randn(2, 8, 3, 32, 32), torch.randn(2, 4, 2, 2, 10)
    for trainable in (False, True):
        segmenter = tiny_segmenter(tmp_path)
        query_dim = segmenter.head.queries.shape[-1]
        encoder = TrajectoryEncoder(16, 1, 2, train_tokens_per_trajectory=(4,), eval_tokens_per_trajectory=4)
        connector = TrajTokConnector(
            segmenter, TrajectoryReader(10, query_dim, encoder, 12), trainable=trainable
        )
        tokens, mask = connector(frames, features.requires_grad_())
        assert tokens.shape == (2, segmenter.head.num_queries * 4, 12) and mask.any()
        tokens[mask].square().mean().backward()
        grads = [p.grad for p in segmenter.parameters() if p.grad is not None]
        assert bool(grads) == trainable
        assert features.grad is not None and features.grad.abs().sum() > 0  # a VLM trains its vision tower
        features.grad = None


def test_a_model_that_makes_no_trajectories_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="makes no trajectories"):
        load_segmenting_model(str(write_weights(tmp_path / "vit", "vit3d")), "eval.probe.segmenter")
    assert tiny_segmenter(tmp_path, "trajvit2").registry_name == "trajvit2"


def test_trajadapter_forward_and_backward_leave_the_features_frozen():
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="trajadapter",
        size="tiny",
        num_classes=3,
        adapter_feature_dim=10,
        adapter_query_dim=QUERY_DIM,
        tokens_per_trajectory=[4],
        eval_tokens_per_trajectory=4,
    )
    adapter = build_model(cfg, ClipConfig())
    trajectories = random_trajectories(2, (2, 4, 4), slots=6, seed=0)
    features = torch.randn(2, 2, 4, 4, 10, requires_grad=True)
    out = adapter(features, trajectories)
    assert out.class_logits.shape == (2, 3) and (out.num_tokens == trajectories.present.sum(1) * 4).all()
    out.class_logits.sum().backward()
    assert features.grad is None
    assert all(p.grad is not None for p in adapter.parameters() if p.requires_grad)


def test_a_trajectory_smaller_than_a_cell_owns_none_but_covers_its_share():
    segmenter = PaintedSegmenter(num_queries=4)
    clip = torch.zeros(1, 8, 3, 8, 8)
    clip[0, :, 0, 1:3, 1:3] = 1.0  # a 2x2 object: a quarter of one 4x4 cell of the 2x2 foreign grid
    hard = trajectories_on_grid(segmenter, clip, (8, 2, 2))
    covered = trajectories_on_grid(segmenter, clip, (8, 2, 2), coverage=True)
    assert hard.present[0].tolist() == [False, True, False, False]  # only the background owns a cell
    assert covered.present[0].tolist() == [True, True, False, False]
    assert torch.allclose(covered.coverage.sum(dim=2), torch.ones(1, 32))  # every cell's shares sum to 1
    assert torch.allclose(covered.coverage[0].view(8, 2, 2, 4)[:, 0, 0, 0], torch.full((8,), 0.25))


def test_linking_merges_coverage_with_the_slots():
    segmenter = PaintedSegmenter(num_queries=4)
    clip = crossing_clip(first_query=[3, 1])
    linked = trajectories_on_grid(segmenter, clip, (16, 8, 8), chunk_frames=8, link_iou=0.5, coverage=True)
    assert linked.present.sum().item() == 2 and linked.coverage.shape == (1, 1024, 8)
    assert torch.allclose(linked.coverage.sum(dim=2), torch.ones(1, 1024))
    owned = linked.coverage.argmax(dim=2)
    assert set(owned.unique().tolist()) <= set(linked.present[0].nonzero().flatten().tolist())


def test_a_coverage_reader_reads_only_the_cells_its_trajectory_covers():
    torch.manual_seed(0)
    encoder = TrajectoryEncoder(
        16, 1, 2, train_tokens_per_trajectory=(2,), eval_tokens_per_trajectory=2, hard_mask=False
    )
    module = TrajectoryReader(10, QUERY_DIM, encoder, out_dim=12).eval()
    grid = (1, 2, 2)
    coverage = torch.tensor([[[0.75, 0.25, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]])
    trajectories = ForeignTrajectories.from_ids(
        coverage.argmax(2), torch.randn(1, 3, QUERY_DIM), grid, coverage
    )
    assert trajectories.present.tolist() == [[True, True, True]]  # slot 1 owns no cell but covers one
    features = torch.randn(1, *grid, 10)
    with torch.no_grad():
        tokens, _ = module(features, trajectories)
        changed = features.clone()
        changed[0, 0, 0, 1] += 3.0  # cell 1 (t 0, y 0, x 1): covered by slot 0 only
        moved = (module(changed, trajectories)[0] - tokens).abs().amax(dim=-1).view(3, 2)
    assert (moved[0] > 1e-3).all() and (moved[1:] < 1e-7).all()  # not read at all: no 1e-6 leak
    with pytest.raises(ValueError, match="coverage=True"):
        module(features, ForeignTrajectories.from_ids(coverage.argmax(2), trajectories.queries, grid))

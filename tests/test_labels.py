"""Label-map contract: codec, validator, relabel, geometry shared with frames, stats, TrajViT import."""

from __future__ import annotations

import time

import numpy as np
import pytest

from trajtok.data.labels import (
    Box,
    center_crop_box,
    count_trajectories,
    crop_frames,
    crop_labels,
    decode_labels,
    encode_labels,
    load_labels,
    relabel,
    resize_frames,
    resize_labels,
    save_labels,
    short_side_size,
    trajectory_stats,
    validate_labels,
)
from trajtok.data.trajvit_format import convert_trajvit, load_trajvit, sidecar_paths
from trajtok.errors import LabelFormatError


def blocks(t: int = 4, h: int = 48, w: int = 64, block: int = 8, seed: int = 0) -> np.ndarray:
    """Labels made of square blocks with random ids (some 0), shifting by a pixel per frame."""
    rng = np.random.default_rng(seed)
    grid = rng.integers(0, 40, size=(h // block + 2, w // block + 2)).astype(np.uint16)
    big = np.kron(grid, np.ones((block, block), dtype=np.uint16))
    return np.stack([big[i : i + h, i : i + w] for i in range(t)])


def coordinate_scene(h: int, w: int, t: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Frames whose red channel is 3*x and green 3*y, and labels that encode the same (y, x)."""
    y, x = np.mgrid[0:h, 0:w]
    frame = np.stack([3 * x, 3 * y, np.zeros_like(x)], axis=-1).astype(np.uint8)
    labels = (y * w + x + 1).astype(np.uint16)
    return np.repeat(frame[None], t, axis=0), np.repeat(labels[None], t, axis=0)


# --- codec --------------------------------------------------------------------------------------------


def test_bytes_round_trip_is_exact_and_compressed():
    labels = blocks()
    data = encode_labels(labels)
    back = decode_labels(data)
    assert back.dtype == np.uint16 and np.array_equal(back, labels)
    assert len(data) < labels.nbytes / 4


def test_encoding_is_byte_identical_whenever_it_runs(monkeypatch):
    """A rerun of a pipeline job must write the same label bytes (zip entries carry a time stamp)."""
    labels = blocks()
    first = encode_labels(labels)
    monkeypatch.setattr(time, "time", lambda: 2_000_000_000.0)
    assert encode_labels(labels) == first
    assert encode_labels(labels.copy()) == first


def test_file_round_trip(tmp_path):
    labels = blocks(t=3)
    path = save_labels(tmp_path / "sub" / "clip.npz", labels)
    assert path.is_file()
    assert np.array_equal(load_labels(path), labels)
    with np.load(path) as npz:  # the stored layout other tools can read
        assert npz.files == ["labels"]


def test_decode_errors_name_the_input(tmp_path):
    with pytest.raises(LabelFormatError, match=r"^shard7/abc\.labels\.npz: not a readable \.npz"):
        decode_labels(b"not a zip file", "shard7/abc.labels.npz")
    wrong_key = tmp_path / "wrong.npz"
    np.savez_compressed(wrong_key, masks=blocks())
    with pytest.raises(LabelFormatError, match=r"wrong\.npz: no 'labels' array \(has \['masks'\]\)"):
        load_labels(wrong_key)
    with pytest.raises(LabelFormatError, match=r"missing\.npz: cannot read"):
        load_labels(tmp_path / "missing.npz")
    wrong_dtype = tmp_path / "int32.npz"
    np.savez_compressed(wrong_dtype, labels=blocks().astype(np.int32))
    with pytest.raises(LabelFormatError, match=r"int32\.npz: expected dtype uint16, got int32"):
        load_labels(wrong_dtype)


# --- validator -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("labels", "kwargs", "message"),
    [
        ([[1, 2]], {}, "expected a numpy array, got list"),
        (np.zeros((2, 4, 4), np.int64), {}, "expected dtype uint16, got int64"),
        (np.zeros((4, 4), np.uint16), {}, r"expected a non-empty \(T, H, W\) array, got shape \(4, 4\)"),
        (np.zeros((0, 4, 4), np.uint16), {}, "non-empty"),
        (np.zeros((3, 4, 6), np.uint16), {"num_frames": 16}, "has 3 frames, the clip has 16"),
        (np.zeros((3, 4, 6), np.uint16), {"frame_size": (4, 8)}, r"are 4x6 \(HxW\), the clip's are 4x8$"),
        (np.zeros((3, 6, 4), np.uint16), {"frame_size": (4, 6)}, r"transposed"),
        (np.arange(24, dtype=np.uint16).reshape(2, 3, 4), {"max_trajectories": 20}, "23 trajectories, more"),
    ],
)
def test_validator_errors(labels, kwargs, message):
    with pytest.raises(LabelFormatError, match=rf"^clip-0042: .*{message}"):
        validate_labels(labels, "clip-0042", **kwargs)


def test_validator_accepts_a_good_map():
    labels = blocks(t=3, h=16, w=24)
    validate_labels(labels, num_frames=3, frame_size=(16, 24), max_trajectories=count_trajectories(labels))


# --- relabel and stats -----------------------------------------------------------------------------------


def test_relabel_orders_ids_by_first_appearance_in_t_y_x_scan():
    labels = np.array(
        [
            [[0, 900, 900], [17, 17, 0]],
            [[5, 900, 0], [17, 65535, 65535]],
        ],
        dtype=np.uint16,
    )
    expected = np.array([[[0, 1, 1], [2, 2, 0]], [[3, 1, 0], [2, 4, 4]]], dtype=np.uint16)
    out = relabel(labels)
    assert out.dtype == np.uint16
    assert np.array_equal(out, expected)


def test_relabel_keeps_the_partition_and_is_idempotent():
    labels = blocks(t=6, seed=3)
    out = relabel(labels)
    assert out.max() == count_trajectories(labels)
    assert np.array_equal(out == 0, labels == 0)
    # same pixels share an id before and after: the map between old and new ids is one-to-one
    pairs = np.unique(np.stack([labels.ravel(), out.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    assert np.array_equal(relabel(out), out)
    assert relabel(np.zeros((2, 3, 3), np.uint16)).max() == 0


def test_trajectory_stats_per_id():
    labels = np.zeros((3, 4, 5), np.uint16)
    labels[0, :2, :2] = 7  # 4 px in frame 0
    labels[2, 0, :] = 7  # 5 px in frame 2
    labels[1:, 3, 1:4] = 2  # 3 px in frames 1 and 2
    stats = trajectory_stats(labels)
    assert len(stats) == 2
    assert stats.ids.tolist() == [2, 7]
    assert stats.frames_present.tolist() == [2, 2]
    assert stats.area.tolist() == [6, 9]
    assert stats.presence.tolist() == [[False, True, True], [True, False, True]]
    assert stats.frame_area.tolist() == [[0, 3, 3], [4, 0, 5]]
    assert len(trajectory_stats(np.zeros((2, 3, 3), np.uint16))) == 0


def test_operations_are_fast_at_16x224x224():
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 128, size=(16, 28, 28)).astype(np.uint16)
    labels = np.kron(grid, np.ones((1, 8, 8), dtype=np.uint16))
    start = time.perf_counter()
    relabel(labels)
    trajectory_stats(labels)
    resize_labels(labels, (112, 112))
    count_trajectories(labels)
    elapsed = time.perf_counter() - start
    assert elapsed < 0.25, f"label ops took {elapsed * 1000:.0f} ms on a (16, 224, 224) map"


# --- geometry: frames and labels stay aligned ------------------------------------------------------------


@pytest.mark.parametrize("size", [(30, 37), (18, 24), (96, 150), (61, 80)])
def test_resized_frames_and_labels_sample_the_same_place(size):
    h, w = 48, 80
    frames, labels = coordinate_scene(h, w)
    small_frames = resize_frames(frames, size)
    small_labels = resize_labels(labels, size)
    assert small_frames.shape == (2, *size, 3) and small_labels.shape == (2, *size)
    src_y, src_x = np.divmod(small_labels.astype(np.int64) - 1, w)
    # the frame value is the source coordinate of the output pixel's centre (c - 0.5 in index units);
    # the label is the source pixel that holds that centre, so they differ by at most half a pixel
    # (plus uint8 rounding); a grid shifted by even a third of a pixel fails this
    assert np.abs(small_frames[..., 0] / 3 - src_x).max() <= 0.5 + 0.2
    assert np.abs(small_frames[..., 1] / 3 - src_y).max() <= 0.5 + 0.2


def test_resize_labels_never_invents_ids():
    labels = blocks(t=2, h=40, w=56)
    for size in [(13, 17), (80, 112), (40, 56)]:
        out = resize_labels(labels, size)
        assert out.dtype == np.uint16
        assert set(np.unique(out)) <= set(np.unique(labels))
    assert np.array_equal(resize_labels(labels, (40, 56)), labels)
    # an integer downscale takes the lower-right pixel of each 2x2 block's centre, i.e. index 2i+1
    assert np.array_equal(resize_labels(labels, (20, 28)), labels[:, 1::2, 1::2])


def test_painted_scene_survives_crop_then_resize():
    """Frames painted from their labels: after the same crop and resize, colours still match ids."""
    labels = blocks(t=3, h=72, w=96, block=12, seed=5)
    palette = np.random.default_rng(1).integers(0, 256, size=(int(labels.max()) + 1, 3)).astype(np.uint8)
    palette[0] = 0
    frames = palette[labels]
    box = center_crop_box(72, 96, (60, 80))
    size = short_side_size(60, 80, 45)
    out_frames = resize_frames(crop_frames(frames, box), size)
    out_labels = resize_labels(crop_labels(labels, box), size)
    assert out_frames.shape[1:3] == out_labels.shape[1:] == (45, 60)
    painted = palette[out_labels]
    exact = (out_frames == painted).all(axis=-1)
    # pixels away from block edges average one colour: they must be the labelled block's colour
    assert exact.mean() > 0.6
    shifted = palette[resize_labels(crop_labels(labels, Box(box.top + 3, box.left + 3, 60, 80)), size)]
    assert (out_frames == shifted).all(axis=-1).mean() < exact.mean() - 0.1


def test_crop_takes_the_same_window_from_frames_and_labels():
    frames, labels = coordinate_scene(30, 40)
    box = Box(top=5, left=7, height=20, width=25)
    f, lab = crop_frames(frames, box), crop_labels(labels, box)
    assert f.shape == (2, 20, 25, 3) and lab.shape == (2, 20, 25)
    src_y, src_x = np.divmod(lab.astype(np.int64) - 1, 40)
    assert np.array_equal(f[..., 0] // 3, src_x) and np.array_equal(f[..., 1] // 3, src_y)
    assert (src_y.min(), src_x.min()) == (5, 7)
    with pytest.raises(ValueError, match="does not fit"):
        crop_labels(labels, Box(20, 0, 11, 10))
    with pytest.raises(ValueError, match="outside"):
        crop_frames(frames, Box(-1, 0, 5, 5))


def test_crop_box_and_short_side_helpers():
    assert center_crop_box(11, 20, 8) == Box(1, 6, 8, 8)
    assert center_crop_box(576, 768, (224, 224)) == Box(176, 272, 224, 224)
    with pytest.raises(ValueError):
        center_crop_box(10, 10, 12)
    assert short_side_size(576, 768, 224) == (224, 299)
    assert short_side_size(576, 768, 224, multiple=2) == (224, 298)
    assert short_side_size(240, 320, 112, multiple=2) == (112, 150)
    assert short_side_size(1080, 1920, 224, multiple=2) == (224, 398)


# --- TrajViT sidecars ----------------------------------------------------------------------------------


def trajvit_pair(h: int = 40, w: int = 64) -> tuple[np.ndarray, np.ndarray, dict]:
    """Two tracked objects stored the way the public code stores them.

    Each frame's binary masks are multiplied by their per-frame index (1-based) and summed, so where the
    (dilated) masks overlap the pixel holds 1 + 2 = 3, which is no segment of that frame. The per-frame
    order of the two objects swaps in frame 1, which only the graph can undo.
    """
    t = 3
    a = np.zeros((t, h, w), bool)
    b = np.zeros((t, h, w), bool)
    for i in range(t):
        a[i, 8:30, 6 + i : 30 + i] = True  # columns 6+i .. 29+i
        b[i, 8:30, 26 + i : 50 + i] = True  # columns 26+i .. 49+i: overlap of 4 columns with a
    order = [(a, b), (b, a), (a, b)]  # per-frame segment order
    masks = np.stack([(first[i] * 1 + second[i] * 2) for i, (first, second) in enumerate(order)])
    graph = np.array([[1, 2, 1], [2, 1, 2]])  # row 0 = object a, row 1 = object b
    return masks.astype(np.uint8), graph, {"a": a, "b": b, "overlap": a & b}


def test_trajvit_import_links_ids_over_time_and_resolves_summed_overlaps():
    masks, graph, truth = trajvit_pair()
    result = convert_trajvit(masks, graph, name="clip_mask.npz", frame_size=(40, 64))
    labels = result.labels
    assert labels.dtype == np.uint16 and labels.shape == masks.shape
    validate_labels(labels, frame_size=(40, 64), num_frames=3)
    only_a, only_b = truth["a"] & ~truth["b"], truth["b"] & ~truth["a"]
    assert np.unique(labels[only_a]).tolist() == [1]  # object a keeps id 1 in every frame, despite the swap
    assert np.unique(labels[only_b]).tolist() == [2]
    assert result.resolved_pixels == int(truth["overlap"].sum()) == 3 * 22 * 4
    assert result.unknown_ids == (3,)
    assert result.empty_trajectories == 0
    assert set(np.unique(labels)) <= {0, 1, 2}  # the summed id 3 is never passed on
    # "nearest": an overlap pixel next to a's side goes to a, next to b's side to b
    assert labels[0, 18, 26] == 1 and labels[0, 18, 29] == 2


def test_trajvit_unlabel_policy_counts_and_clears_overlaps():
    masks, graph, truth = trajvit_pair()
    result = convert_trajvit(masks, graph, overlap="unlabel")
    assert result.resolved_pixels == int(truth["overlap"].sum())
    assert (result.labels[truth["overlap"]] == 0).all()
    assert count_trajectories(result.labels) == 2
    with pytest.raises(ValueError, match="overlap must be one of"):
        convert_trajvit(masks, graph, overlap="sum")


def test_trajvit_files_and_sidecar_names(tmp_path):
    masks, graph, _ = trajvit_pair()
    mask_path, graph_path = sidecar_paths(tmp_path / "clip_short.mp4")
    assert (mask_path.name, graph_path.name) == ("clip_mask.npz", "clip_graph.npz")
    assert sidecar_paths("v/x.avi", "_v2") == (
        sidecar_paths("v/x.avi")[0].with_name("x_mask_v2.npz"),
        sidecar_paths("v/x.avi")[1].with_name("x_graph_v2.npz"),
    )
    np.savez_compressed(mask_path, masks)  # positional: key arr_0, as the public code saves it
    np.savez_compressed(graph_path, tensor=graph)
    result = load_trajvit(mask_path, graph_path, frame_size=(40, 64))
    assert count_trajectories(result.labels) == 2 and result.resolved_pixels > 0


def test_trajvit_graph_rows_without_pixels_are_dropped_and_ids_renumbered():
    masks, graph, _ = trajvit_pair()
    graph = np.concatenate([np.array([[0, 0, 5]]), graph, np.zeros((1, 3), graph.dtype)])
    result = convert_trajvit(masks, graph)
    assert result.empty_trajectories == 2
    assert sorted(np.unique(result.labels).tolist()) == [0, 1, 2]


def test_trajvit_image_mask_needs_no_graph():
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 3:9] = 4
    mask[10:15, 10:25] = 1
    result = convert_trajvit(mask)
    assert result.labels.shape == (1, 20, 30)
    assert result.labels[0, 3, 4] == 1 and result.labels[0, 12, 12] == 2
    assert result.resolved_pixels == 0


def test_trajvit_transposed_mask_is_a_clear_error(tmp_path):
    masks, graph, _ = trajvit_pair(h=40, w=64)
    transposed = masks.transpose(0, 2, 1)
    mask_path, graph_path = tmp_path / "v_mask.npz", tmp_path / "v_graph.npz"
    np.savez_compressed(mask_path, transposed)
    np.savez_compressed(graph_path, tensor=graph)
    with pytest.raises(
        LabelFormatError, match=r"v_mask\.npz: mask is 64x40 but the frames are 40x64.*transposed"
    ):
        load_trajvit(mask_path, graph_path, frame_size=(40, 64))
    with pytest.raises(LabelFormatError, match=r"mask is 40x64, not the shape of the 48x64 \(HxW\) frames$"):
        convert_trajvit(masks, graph, frame_size=(48, 64))
    with pytest.raises(LabelFormatError, match="saved transposed"):  # also at another resolution
        convert_trajvit(transposed, graph, frame_size=(20, 32))


def test_trajvit_masks_at_another_resolution_are_resized_to_the_frames():
    masks, graph, truth = trajvit_pair(h=40, w=64)
    full = convert_trajvit(masks, graph, overlap="unlabel").labels
    half = convert_trajvit(masks, graph, frame_size=(20, 32), overlap="unlabel")
    assert half.labels.shape == (3, 20, 32)
    assert np.array_equal(half.labels, resize_labels(full, (20, 32)))
    assert half.resolved_pixels == int(truth["overlap"].sum())  # counted at the stored resolution
    assert convert_trajvit(masks, graph, frame_size=(90, 146)).labels.shape == (3, 90, 146)  # ~1% rounding


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m, g: (m, g.T), r"graph is \(3, 2\), i\.e\. \(T, M\) \(transposed\)"),
        (lambda m, g: (m, g[:, :2]), "graph covers 2 frames, the mask has 3"),
        (lambda m, g: (m, None), "a video mask of 3 frames needs its _graph.npz"),
        (lambda m, g: (m.astype(np.float32), g), "expected integer ids, got dtype float32"),
        (lambda m, g: (m, np.array([[1, 2, 1], [1, 1, 2]])), "gives per-frame id 1 of frame 0 to two"),
        (lambda m, g: (m[0, 0], g), r"expected per-frame id maps \(T, H, W\)|graph covers"),
    ],
)
def test_trajvit_malformed_sidecars(change, message):
    masks, graph = change(*trajvit_pair()[:2])
    with pytest.raises(LabelFormatError, match=message):
        convert_trajvit(masks, graph, name="clip_mask.npz")


def test_trajvit_missing_or_wrong_files(tmp_path):
    with pytest.raises(LabelFormatError, match=r"nope_mask\.npz: file not found"):
        load_trajvit(tmp_path / "nope_mask.npz")
    bad = tmp_path / "bad_mask.npz"
    np.savez_compressed(bad, masks=np.zeros((2, 2), np.uint8))
    with pytest.raises(LabelFormatError, match=r"bad_mask\.npz: no 'arr_0' array"):
        load_trajvit(bad)

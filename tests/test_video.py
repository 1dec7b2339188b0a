"""Video decoding on real files: the shared sample videos, files cut short, and broken inputs made here."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import av
import fsspec
import numpy as np
import pytest
from av.video.frame import PictureType

from launch.cli import main as cli_main
from trajtok.data import video as video_module
from trajtok.data.encode import encode_video, write_video
from trajtok.data.labels import resize_frames
from trajtok.data.video import load_clip, open_video, sample_frame_indices
from trajtok.errors import VideoDecodeError

# name: (decodable frames, width, height, duration in seconds)
SHARED = {"vtest.avi": (795, 768, 576, 79.5), "tree.avi": (68, 320, 240, 444 * 0.066667)}


def _clip(frames: int = 12, height: int = 48, width: int = 64) -> np.ndarray:
    """A moving gradient, so neighbouring frames differ and compress well."""
    t, y, x = np.meshgrid(np.arange(frames), np.arange(height), np.arange(width), indexing="ij")
    image = np.stack([(x * 4 + t * 9) % 256, (y * 5 + t * 7) % 256, (x + y + t * 3) % 256], axis=-1)
    return image.astype(np.uint8)


def _audio_only_mp4() -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        stream.layout = "mono"
        tone = (0.3 * np.sin(np.linspace(0, 880 * np.pi, 16000))).astype(np.float32)[None]
        for start in range(0, tone.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(tone[:, start : start + 1024], format="fltp", layout="mono")
            frame.sample_rate = 16000
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _assert_same_pictures(frames: np.ndarray, expected: np.ndarray) -> None:
    """decord and PyAV convert YUV to RGB with slightly different rounding (at most a few levels)."""
    assert frames.shape == expected.shape
    difference = np.abs(frames.astype(int) - expected)
    assert difference.mean() < 0.05 and difference.max() <= 3


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    mp4 = encode_video(_clip(), fps=10)  # its index (moov) comes last, so a cut loses it
    contents = {
        "empty.mp4": b"",
        "truncated.mp4": mp4[: len(mp4) // 2],
        "text.mp4": b"this is a caption, not a video\n" * 20,
        "random.mp4": np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "audio_only.mp4": _audio_only_mp4(),
    }
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in contents}


@pytest.fixture
def reference(shared_videos):
    """Frames decoded by PyAV from the intact file, to compare other reads against."""
    readers = {}

    def frames(name: str, indices) -> np.ndarray:
        if name not in readers:
            readers[name] = open_video(shared_videos / name, backend="pyav")
        return readers[name].read_frames(indices)

    yield frames
    for reader in readers.values():
        reader.close()


@pytest.mark.parametrize("backend", ["decord", "pyav"])
@pytest.mark.parametrize("name", sorted(SHARED))
def test_shared_videos_decode_with_each_backend(shared_videos, name, backend):
    num_frames, width, height, duration = SHARED[name]
    with open_video(shared_videos / name, backend=backend) as video:
        info = video.info
        assert (info.backend, info.num_frames) == (backend, num_frames)
        assert (info.width, info.height) == (width, height)
        assert info.duration == pytest.approx(duration, abs=1e-5)
        assert info.fps == pytest.approx(num_frames / duration, rel=1e-5)
        frames = video.read_frames([num_frames - 1, 0, 7, 0])
    assert frames.shape == (4, height, width, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames[1], frames[3]) and not np.array_equal(frames[0], frames[1])


@pytest.mark.parametrize("name", sorted(SHARED))
def test_backends_agree_on_count_timestamps_and_pixels(shared_videos, name):
    with (
        open_video(shared_videos / name, backend="decord") as fast,
        open_video(shared_videos / name, backend="pyav") as fallback,
    ):
        count = fast.info.num_frames
        assert fallback.info.num_frames == count
        everything = np.arange(count)
        assert np.allclose(fast.timestamps(everything), fallback.timestamps(everything), atol=1e-5)
        indices = [0, 3, count // 2, count - 2, count - 1]
        _assert_same_pictures(fast.read_frames(indices), fallback.read_frames(indices))


def test_tree_avi_reports_the_frames_it_holds_not_the_declared_count(shared_videos):
    with av.open(str(shared_videos / "tree.avi")) as container:
        assert container.streams.video[0].frames == 444  # the container's claim
    for backend in ("auto", "decord", "pyav"):
        with open_video(shared_videos / "tree.avi", backend=backend) as video:
            assert video.info.num_frames == 68
            assert video.read_frames([67]).shape == (1, 240, 320, 3)
            assert video.timestamps([67])[0] == pytest.approx(443 * 0.066667)  # sparse in time
            with pytest.raises(IndexError):
                video.read_frames([68])


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("empty.mp4", "empty file"),
        ("truncated.mp4", "not a readable video"),
        ("text.mp4", "not a readable video"),
        ("random.mp4", "not a readable video"),
        ("audio_only.mp4", "no video stream (holds: audio)"),
    ],
)
def test_broken_files_raise_one_typed_error_quickly(bad_files, name, reason):
    started = time.perf_counter()
    messages = {}
    for backend in ("auto", "decord", "pyav"):
        with pytest.raises(VideoDecodeError) as caught:
            open_video(bad_files[name], backend=backend)
        messages[backend] = str(caught.value)
        assert messages[backend].startswith(f"{bad_files[name]}: ")
    assert reason in messages["auto"]
    with pytest.raises(VideoDecodeError) as caught:
        open_video(bad_files[name].read_bytes(), name=name)
    assert str(caught.value) == f"{name}: {messages['auto'].split(': ', 1)[1]}"
    assert time.perf_counter() - started < 5


def test_tiny_h264_comes_back_with_three_channels_or_not_at_all(tmp_path):
    """decord decodes 16x16 H.264 into 6-channel frames; that must never reach the caller."""
    frames = _clip(frames=8, height=16, width=16)
    path = write_video(tmp_path / "tiny.mp4", frames, fps=10)
    with open_video(path) as video:
        assert video.info.backend == "pyav"
        decoded = video.read_frames(np.arange(8))
    assert decoded.shape == (8, 16, 16, 3)
    assert np.abs(decoded.astype(int) - frames).mean() < 8  # lossy, but the same pictures
    with pytest.raises(VideoDecodeError, match="tiny.mp4: "):
        open_video(path, backend="decord")


@pytest.mark.parametrize("fraction", [0.6, 0.999])
def test_avi_cut_short_reads_the_true_frames(shared_videos, reference, tmp_path, fraction):
    """Cut short, an AVI loses its index (all of it, or its end): ffmpeg then flags every packet it finds as
    a keyframe, and seeking to those gives broken pictures. The reader must notice and decode correctly."""
    data = (shared_videos / "tree.avi").read_bytes()
    path = tmp_path / "cut.avi"
    path.write_bytes(data[: int(len(data) * fraction)])
    with open_video(path) as video:
        assert video.info.backend == "pyav"
        count = video.info.num_frames
        assert 30 < count <= 68
        indices = [count - 2, 1, count // 2, count // 2 + 1, 5]  # out of order: forces seeks back
        frames = video.read_frames(indices)
    _assert_same_pictures(frames, reference("tree.avi", indices))


@pytest.mark.parametrize(
    ("container", "codec"), [("mp4", "libx264"), ("mkv", "libx264"), ("ts", "libx264"), ("avi", "mpeg4")]
)
def test_frames_with_b_frames_come_back_in_order_from_any_container(tmp_path, container, codec):
    """decord returns wrong frames from MPEG-TS (it seeks late) and from AVI with B-frames (it mixes up their
    order), which is why the default reader is PyAV's."""
    frames = _clip(frames=40)
    path = tmp_path / f"bframes.{container}"
    with av.open(str(path), mode="w") as output:
        stream = output.add_stream(codec, rate=25, options={"bf": "2", "g": "12"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    indices = np.array([39, 17, 0, 1, 2, 25, 13])
    with open_video(path) as video:
        assert (video.info.num_frames, video.info.fps) == (40, pytest.approx(25.0))
        decoded = video.read_frames(indices).astype(int)
    distances = np.abs(decoded[:, None] - frames[None].astype(int)).mean(axis=(2, 3, 4))
    assert distances.argmin(axis=1).tolist() == indices.tolist()  # each is closest to the frame asked for


@pytest.fixture
def b_pyramid_video(tmp_path) -> tuple[Path, np.ndarray]:
    """H.264 with B-frames, some of them referenced, and its frames as a plain full decode gives them."""
    path = tmp_path / "pyramid.mp4"
    with av.open(str(path), mode="w") as output:
        options = {"bf": "3", "b-pyramid": "normal", "g": "30"}  # B-frames, some of them referenced
        stream = output.add_stream("libx264", rate=25, options=options)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in _clip(frames=90):
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode())
    with av.open(str(path)) as container:
        decoded = list(container.decode(video=0))
    assert any(frame.pict_type == PictureType.B for frame in decoded)
    return path, np.stack([frame.to_ndarray(format="rgb24") for frame in decoded])


READ_ORDERS = ([5, 40, 41, 77], [6, 7], [4], [89, 0, 45], np.arange(0, 90, 7))


def test_frames_skipped_as_unreferenced_never_change_a_wanted_frame(b_pyramid_video):
    """Reads skip B-frames nobody asked for; every frame asked for must still be bit-exact, whatever the order
    of the reads (a later read may want a frame an earlier one skipped)."""
    path, everything = b_pyramid_video
    with open_video(path) as video:
        for indices in READ_ORDERS:
            assert np.array_equal(video.read_frames(indices), everything[indices])


def test_packets_stamped_unlike_their_frames_are_read_without_skipping(b_pyramid_video, monkeypatch):
    """Where packet timestamps do not name the frames they hold (packed B-frames in old AVI files), the skip
    would drop wanted frames: the read is repeated without it."""
    path, everything = b_pyramid_video
    with open_video(path) as video:
        stamp = video_module._stamp

        def off_by_one_for_packets(item):
            time = stamp(item)
            return time + 1 if time is not None and isinstance(item, av.Packet) else time

        monkeypatch.setattr(video_module, "_stamp", off_by_one_for_packets)
        for indices in READ_ORDERS:
            assert np.array_equal(video.read_frames(indices), everything[indices])


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_frames_read_at_a_size_match_frames_resized_after(shared_videos, backend):
    """Decoders resize in their colour conversion; the pictures must be those of `resize_frames`."""
    with open_video(shared_videos / "vtest.avi", backend=backend) as video:
        full = video.read_frames([0, 300, 301])
        for size in [(256, 342), (600, 800)]:  # shrinking (area) and growing (bilinear)
            resized = video.read_frames([0, 300, 301], size=size)
            assert resized.shape == (3, *size, 3)
            difference = np.abs(resized.astype(int) - resize_frames(full, size))
            assert difference.mean() < 2.5
        frames, _ = video.sample_clip(4, start=10.0, end=20.0, size=(128, 170))
        assert frames.shape == (4, 128, 170, 3)


def test_an_open_decord_reader_leaves_the_cpu_idle(shared_videos):
    """decord's decoder thread spins a core after a read until the next seek; an idle reader costs nothing."""
    with open_video(shared_videos / "vtest.avi", backend="decord") as video:
        video.read_frames([100, 200])
        before = time.process_time()
        time.sleep(0.5)
        assert time.process_time() - before < 0.2


def test_truncated_mp4_with_index_first_keeps_only_frames_that_decode(tmp_path):
    frames = _clip(frames=30)
    path = tmp_path / "faststart.mp4"
    with av.open(str(path), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10, options={"g": "5", "bf": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])  # the index still lists 30 frames
    with open_video(path) as video:
        assert 5 < video.info.num_frames < 30
        last = video.read_frames([video.info.num_frames - 1])
    assert np.abs(last[0].astype(int) - frames[video.info.num_frames - 1]).mean() < 8


def test_bytes_and_uris_read_like_the_path(shared_videos, monkeypatch, tmp_path):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where remote files and bytes are spilled
    path = shared_videos / "tree.avi"
    with open_video(path) as video:
        expected = video.read_frames([0, 40])
    fsspec.filesystem("memory").pipe("/videos/tree.avi", path.read_bytes())
    sources = [path.read_bytes(), "memory://videos/tree.avi", f"file://{path}", str(path)]
    for source in sources:
        with open_video(source) as video:
            assert (video.info.num_frames, video.info.width) == (68, 320)
            assert np.array_equal(video.read_frames([0, 40]), expected)
    assert video.info.source == str(path)
    assert not list(tmp_path.iterdir())  # spilled copies are gone once closed
    with open_video(path.read_bytes()) as video:  # a shard's clip: decoded from memory, never spilled
        video.read_frames([5, 60, 2])
        assert video.info.backend == "pyav" and not list(tmp_path.iterdir())
    for missing in (tmp_path / "nope.mp4", "memory://videos/nope.mp4", "nosuchprotocol://x.mp4"):
        with pytest.raises(VideoDecodeError, match=f"^{missing}: "):
            open_video(missing)


def test_sample_frame_indices_middle_is_bin_centres_and_random_one_per_bin():
    assert sample_frame_indices(100, 10.0, 4).tolist() == [12, 37, 62, 87]
    assert sample_frame_indices(100, 10.0, 4, start=2.0, end=6.0).tolist() == [25, 35, 45, 55]
    assert sample_frame_indices(3, 10.0, 6).tolist() == [0, 0, 1, 1, 2, 2]  # short windows repeat frames
    draws = [sample_frame_indices(100, 10.0, 4, "random", rng=seed) for seed in range(20)]
    for draw in draws:
        assert ((draw >= [0, 25, 50, 75]) & (draw < [25, 50, 75, 100])).all()
    assert np.array_equal(draws[0], sample_frame_indices(100, 10.0, 4, "random", rng=0))
    assert len({tuple(draw) for draw in draws}) > 10
    with pytest.raises(ValueError, match="unknown sampling mode"):
        sample_frame_indices(100, 10.0, 4, "uniform")
    with pytest.raises(ValueError, match="holds no frames"):
        sample_frame_indices(100, 10.0, 4, start=20.0)


def test_clips_are_cut_on_decoded_timestamps(shared_videos, reference):
    with open_video(shared_videos / "vtest.avi") as video:
        frames, times = video.sample_clip(4, "middle", start=10.0, end=20.0)
        assert times == pytest.approx([11.2, 13.7, 16.2, 18.7], abs=1e-4)
        _assert_same_pictures(frames, reference("vtest.avi", [112, 137, 162, 187]))
        assert np.array_equal(video.read_at([12.34, 0.0]), video.read_frames([123, 0]))
        with pytest.raises(VideoDecodeError, match="no frames in"):
            video.sample_clip(4, start=100.0, end=110.0)
    frames, times, info = load_clip(shared_videos / "tree.avi", 8, "random", start=5.0, end=15.0, rng=1)
    assert frames.shape == (8, 240, 320, 3) and info.num_frames == 68
    assert (np.diff(times) >= 0).all() and times[0] >= 5.0 and times[-1] < 15.0
    again, _, _ = load_clip(shared_videos / "tree.avi", 8, "random", start=5.0, end=15.0, rng=1)
    assert np.array_equal(frames, again)


def _wait_for_decoder_threads(limit: float = 10.0) -> None:
    for worker in threading.enumerate():
        if worker.name.startswith("decode "):
            worker.join(limit)


def test_a_stalled_read_times_out(tmp_path):
    """A named pipe whose writer stalls blocks the decoder inside ffmpeg, like a hung network file system."""
    pipe = tmp_path / "stalled.avi"
    os.mkfifo(pipe)
    writer_fd = []
    feeder = threading.Thread(target=lambda: writer_fd.append(os.open(pipe, os.O_WRONLY)))
    feeder.start()
    started = time.perf_counter()
    try:
        with pytest.raises(VideoDecodeError, match=r"stalled.avi: decode timed out after 0.5s"):
            open_video(pipe, timeout=0.5, backend="pyav")
        assert time.perf_counter() - started < 3
    finally:
        feeder.join()
        os.write(writer_fd[0], b"RIFF")
        os.close(writer_fd[0])  # end of file: the abandoned decoder gives up
        _wait_for_decoder_threads()


def test_a_read_past_its_deadline_is_abandoned_and_the_reader_refuses_more(shared_videos):
    with open_video(shared_videos / "vtest.avi") as video:
        video.timeout = 0.001  # 16 frames spread over vtest.avi take about 0.3 s
        with pytest.raises(VideoDecodeError, match="timed out after 0.001s"):
            video.read_frames(np.arange(0, 795, 50))
        with pytest.raises(VideoDecodeError, match="an earlier decode timed out"):
            video.read_frames([0])
    _wait_for_decoder_threads()


def test_exit_waits_for_an_abandoned_decord_decode(shared_videos):
    """decord aborts the process if the interpreter exits under one of its running decodes."""
    script = (
        "import sys, numpy as np\n"
        "from trajtok.data.video import open_video\n"
        f"video = open_video({str(shared_videos / 'vtest.avi')!r}, backend='decord')\n"
        "video.timeout = 0.001\n"
        "try:\n"
        "    video.read_frames(np.arange(0, 795, 50))\n"
        "except Exception as err:\n"
        "    print(err)\n"
        "sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr) == (3, "")
    assert "timed out" in done.stdout


def test_video_info_command_prints_json_and_one_error_line_per_bad_file(shared_videos, bad_files, capfd):
    paths = [shared_videos / "vtest.avi", bad_files["text.mp4"], shared_videos / "tree.avi"]
    paths.append(bad_files["audio_only.mp4"])
    assert cli_main(["video-info", *map(str, paths)]) == 1
    out, err = capfd.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(row["source"], row["num_frames"], row["backend"]) for row in rows] == [
        (str(paths[0]), 795, "pyav"),
        (str(paths[2]), 68, "pyav"),
    ]
    assert set(rows[0]) == {
        *("source", "backend", "fps", "num_frames", "width", "height", "duration"),
        *("timestamps", "rotation", "sample_aspect_ratio"),
    }
    decoding = (rows[0]["timestamps"], rows[0]["rotation"], rows[0]["sample_aspect_ratio"])
    assert decoding == ("container", 0, 1.0)
    assert err.splitlines() == [
        f"trajtok video-info: error: {paths[1]}: not a readable video (invalid data found when processing "
        "input)",
        f"trajtok video-info: error: {paths[3]}: no video stream (holds: audio)",
    ]
    assert cli_main(["video-info", "--backend", "decord", str(shared_videos / "tree.avi")]) == 0
    assert json.loads(capfd.readouterr().out)["backend"] == "decord"

"""Long-video QA data: answers checked against the exact label maps, not against the generator's own story."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from trajtok.config import SynthConfig
from trajtok.data.labels import load_labels
from trajtok.data.qa import read_qa
from trajtok.data.synth import write_dataset
from trajtok.data.synth_qa import QUESTION_TYPES
from trajtok.errors import ConfigError

SHARED_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
FRAMES = 64


@pytest.fixture(scope="module", params=[3, 11])
def qa_set(request, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp(f"qa{request.param}")
    cfg = SynthConfig(
        out=str(out), videos=12, frames=FRAMES, height=64, width=64, seed=request.param, questions=True
    )
    return write_dataset(cfg)


def _truth(manifest: Path) -> dict[str, tuple[dict, np.ndarray]]:
    scenes = {json.loads(line)["id"]: json.loads(line) for line in (manifest.parent / "scenes.jsonl").open()}
    return {
        key: (scene, load_labels(manifest.parent / "labels" / f"{key}.npz")) for key, scene in scenes.items()
    }


def test_every_answer_agrees_with_the_label_maps(qa_set: Path):
    truth = _truth(qa_set)
    items = read_qa(qa_set)
    assert {item.question_type for item in items} == set(QUESTION_TYPES)
    for item in items:
        scene, labels = truth[item.row.id.rsplit("-", 1)[0]]
        objects = scene["objects"]
        seen = {o["id"]: np.flatnonzero((labels == o["id"]).any(axis=(1, 2))) for o in objects}
        first = {o["id"]: int(seen[o["id"]][0]) for o in objects}
        by_name = {f"the {o['colour']} {o['shape']}": o["id"] for o in objects}
        if item.question_type == "count":
            assert item.answer == ("one", "two", "three", "four")[len(np.unique(labels[labels > 0])) - 1]
        elif item.question_type == "last_entry":
            last = max(objects, key=lambda o: first[o["id"]])
            assert item.answer == last["colour"] and first[last["id"]] > 0
        elif item.question_type == "order":
            a, b = (by_name[name] for name in _named(item.question, by_name))
            assert item.answer == ("yes" if first[a] < first[b] else "no")
        else:  # the shape whose centroid moves that way over the last frames
            direction = item.question.split("moving ")[1].split(" ")[0]
            movers = [
                o for o in objects if seen[o["id"]][-1] == FRAMES - 1 and _moves(labels, o["id"]) == direction
            ]
            assert [o["shape"] for o in movers] == [item.answer]


def _named(question: str, names: dict[str, int]) -> list[str]:
    return sorted((name for name in names if name in question), key=question.index)


def _moves(labels: np.ndarray, label: int) -> str:
    """Direction of the centroid from 4 frames before the end to the end."""
    ys, xs = [], []
    for frame in (labels[-5], labels[-1]):
        y, x = np.nonzero(frame == label)
        ys.append(y.mean())
        xs.append(x.mean())
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    if max(abs(dx), abs(dy)) < 0.5:
        return "still"
    if abs(dx) > abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def test_the_answers_need_the_whole_video(qa_set: Path):
    truth = _truth(qa_set)
    for scene, labels in truth.values():
        present = [(labels == o["id"]).any(axis=(1, 2)) for o in scene["objects"]]
        assert len(scene["objects"]) >= 2
        assert any(not p[: FRAMES // 8].any() for p in present)  # someone enters after the first window
    answers = Counter(item.answer for item in read_qa(qa_set) if item.question_type == "order")
    assert answers["yes"] >= 2 and answers["no"] >= 2


def test_a_real_qa_json_loads_through_the_same_reader(tmp_path: Path):
    video = SHARED_VIDEOS / "vtest.avi"
    path = tmp_path / "qa.json"
    path.write_text(
        json.dumps([{"video": str(video), "question": "how many people walk?", "answer": "many"}])
    )
    (item,) = read_qa(path)
    assert (item.question, item.answer, item.question_type, item.row.path) == (
        "how many people walk?",
        "many",
        "all",
        str(video),
    )
    path.write_text(json.dumps([{"video": str(video), "question": "what?"}]))
    with pytest.raises(ConfigError, match=r"qa.json:1: needs a non-empty 'answer'"):
        read_qa(path)

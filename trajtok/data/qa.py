"""Video question answering sets: manifest rows with a `question` and its `answer`.

The synthetic long-video set (`synth.questions=true`) and real QA sets load the same way: any manifest
format (`trajtok.data.manifest`; a JSON list `[{"video": ..., "question": ..., "answer": ...}]` is the
usual shape of a real one), captions optional, one row per question, `question_type` optional (scores are
given per type; rows without one count as "all"). A row without a question or an answer is a one-line
error naming the file and line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trajtok.data.manifest import ManifestRow, read_manifest
from trajtok.errors import ConfigError

QUESTION, ANSWER, QUESTION_TYPE = "question", "answer", "question_type"
DEFAULT_TYPE = "all"


@dataclass(frozen=True)
class QAItem:
    key: str
    question: str
    answer: str
    question_type: str
    row: ManifestRow  # the video, its window (start/end) and the rest of the row


def read_qa(location: str | Path) -> list[QAItem]:
    """Every question of a QA manifest, in file order."""
    rows = read_manifest(location, strict=True, needs_caption=False).rows
    if not rows:
        raise ConfigError(f"{location}: the QA set lists no questions")
    items = []
    for row in rows:
        fields = {}
        for name in (QUESTION, ANSWER):
            value = row.extra.get(name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{location}:{row.line}: needs a non-empty '{name}' string")
            fields[name] = value.strip()
        kind = str(row.extra.get(QUESTION_TYPE) or DEFAULT_TYPE)
        items.append(QAItem(row.id or f"line{row.line}", fields[QUESTION], fields[ANSWER], kind, row))
    return items

"""TrajVLM and PatchVLM: a decoder-only language model answers questions about a video.

A vision tower (a trained model's feature map, window by window: `trajtok.models.feature_maps`) feeds a
connector whose tokens, projected to the language model's width, come before the question:
- `trajvlm`: the TrajTok connector (`trajtok.models.trajectory_reader`): a trained segmenter's trajectories,
  per window of `vlm.window_frames`, each read the features it covers into n tokens: K x n LLM tokens per
  window, whatever happens in it;
- `patchvlm`: each feature frame average-pooled over `vlm.patch_pool` x `vlm.patch_pool` cells (the paper's
  baseline), then the same kind of projector.
Text is `question: <q> answer:` followed by the answer and an end token; the loss is the language model's
next-token cross-entropy on the answer tokens only. Position ids follow the attention mask, so padding
between the video and the question (left-padded prompts at generation) changes nothing.

The language model comes from Hugging Face `transformers`: `tiny` is a small randomly initialised
Qwen3-style model built from its config (tests, the demo); a local checkpoint directory (e.g. Qwen3-4B) is
loaded with `local_files_only`, never downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trajtok.errors import ConfigError
from trajtok.models.feature_maps import VisionTower
from trajtok.models.output import TensorRecord
from trajtok.models.trajectory_reader import TrajTokConnector

IGNORE = -100  # label of a position that is not scored
TEXT_SPECIALS = ("<pad>", "<eos>")  # a tiny LM's tokenizer: padding, end of an answer
END_TOKENS = ("<eos>", "<|im_end|>", "<|endoftext|>", "</s>")  # ours, then common checkpoints' own
PAD_TOKENS = ("<pad>", "[PAD]", "<|endoftext|>")  # else the end token pads
TINY_LANGUAGE = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 2048,
}


def build_language_model(spec: str, vocab_size: int) -> nn.Module:
    """`tiny` (random, for `vocab_size` tokens) or a local Hugging Face checkpoint directory."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    if spec == "tiny":
        config = Qwen3Config(vocab_size=vocab_size, tie_word_embeddings=True, **TINY_LANGUAGE)
        return AutoModelForCausalLM.from_config(config)
    if not Path(spec).is_dir():
        raise ConfigError(f"model.vlm.language '{spec}': not 'tiny' and not a local checkpoint directory")
    try:
        return AutoModelForCausalLM.from_pretrained(spec, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model.vlm.language '{spec}': {str(err).splitlines()[0]}") from None


class QATokenizer:
    """Prompts and answers as token ids of a `tokenizers` tokenizer.json with an end token (`END_TOKENS`)."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        if not Path(path).is_file():
            raise ConfigError(f"model.vlm.tokenizer '{path}': no tokenizer.json there")
        self.tokenizer = Tokenizer.from_file(str(path))
        end = next((t for t in END_TOKENS if self.tokenizer.token_to_id(t) is not None), None)
        if end is None:
            raise ConfigError(
                f"model.vlm.tokenizer '{path}': has none of the end tokens {', '.join(END_TOKENS)}"
            )
        pad = next((t for t in PAD_TOKENS if self.tokenizer.token_to_id(t) is not None), end)
        self.pad_id, self.end_id = self.tokenizer.token_to_id(pad), self.tokenizer.token_to_id(end)
        self.vocab_size = self.tokenizer.get_vocab_size()

    @staticmethod
    def prompt(question: str) -> str:
        return f"question: {question} answer:"

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def training_batch(
        self, questions: Sequence[str], answers: Sequence[str], max_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ids, mask, labels) (B, L): prompt + answer + end, right-padded; labels score the answer and
        the end only. A prompt too long loses its start, never the answer."""
        rows = []
        for question, answer in zip(questions, answers):
            answer_ids = [*self._ids(" " + answer), self.end_id]
            prompt_ids = self._ids(self.prompt(question))[-max(max_len - len(answer_ids), 1) :]
            rows.append((prompt_ids, answer_ids[: max_len - len(prompt_ids)]))
        length = max(len(p) + len(a) for p, a in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, (prompt_ids, answer_ids) in enumerate(rows):
            end = len(prompt_ids) + len(answer_ids)
            ids[row, :end] = torch.tensor(prompt_ids + answer_ids)
            labels[row, len(prompt_ids) : end] = torch.tensor(answer_ids)
            mask[row, :end] = True
        return ids, mask, labels

    def prompts(self, questions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) (B, L) of the prompts, left-padded so every row ends where the answer starts."""
        rows = [self._ids(self.prompt(q))[-max_len:] for q in questions]
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for row, prompt_ids in enumerate(rows):
            ids[row, length - len(prompt_ids) :] = torch.tensor(prompt_ids)
            mask[row, length - len(prompt_ids) :] = True
        return ids, mask

    def answer(self, ids: Sequence[int]) -> str:
        """Generated ids up to the end token, as text."""
        ids = list(ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        return self.tokenizer.decode(ids).strip()


def train_qa_tokenizer(texts: Sequence[str], path: str | Path, vocab_size: int = 512) -> Path:
    """A byte-level BPE for a tiny LM, trained offline on a QA set's questions and answers."""
    from trajtok.models.text import train_bpe_tokenizer

    return train_bpe_tokenizer(texts, path, vocab_size, specials=TEXT_SPECIALS)


def tokenizer_location(language: str, tokenizer: str) -> str:
    """`model.vlm.tokenizer`, else the checkpoint directory's tokenizer.json."""
    if tokenizer:
        return tokenizer
    if language == "tiny":
        raise ConfigError("model.vlm.tokenizer: a tiny language model needs one (trajtok train makes it)")
    return str(Path(language) / "tokenizer.json")


class LanguageOutput(TensorRecord):
    loss: torch.Tensor | None = None  # () next-token cross-entropy over the labelled (answer) positions
    logits: torch.Tensor | None = None  # (B, L, vocab)
    video_tokens: torch.Tensor | None = None  # (B,) long: valid video tokens per clip


class PatchConnector(nn.Module):
    """Feature frames (B, T', h, w, C) average-pooled over `pool` x `pool` cells and projected:
    (B, T' * cells, D)."""

    def __init__(self, feature_dim: int, out_dim: int, pool: int = 3):
        super().__init__()
        self.pool = pool
        self.project = nn.Sequential(
            nn.LayerNorm(feature_dim), nn.Linear(feature_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)
        )

    def forward(self, frames: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch, time, height, width, dim = features.shape
        maps = features.permute(0, 1, 4, 2, 3).reshape(batch * time, dim, height, width)
        pooled = F.avg_pool2d(maps, self.pool, self.pool, ceil_mode=True)  # (B*T', C, h', w')
        tokens = pooled.flatten(2).transpose(1, 2).reshape(batch, -1, dim)
        return self.project(tokens), torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class VideoLanguageModel(nn.Module):
    """frames (B, T, 3, H, W) + text -> the language model's loss and logits; `answer` generates."""

    def __init__(self, vision: VisionTower, connector: nn.Module, language: nn.Module):
        super().__init__()
        self.vision, self.connector, self.language = vision, connector, language

    def parts(self) -> dict[str, nn.Module]:
        parts = {"vision": self.vision, "connector": self.connector, "language": self.language}
        if isinstance(self.connector, TrajTokConnector):  # the segmenter counts with the vision side
            parts["connector"] = self.connector.reader
            parts["video_segmenter"] = self.connector.segmenter
        return parts

    def video_tokens(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, D) LLM inputs of the video and their mask (B, L)."""
        trains_vision = any(p.requires_grad for p in self.vision.parameters())
        with torch.set_grad_enabled(trains_vision and torch.is_grad_enabled()):
            features = self.vision(frames)
        return self.connector(frames, features)

    def forward(
        self,
        frames: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> LanguageOutput:
        """The loss on the labelled positions (when `labels` is given), the logits, and the valid video
        tokens each clip gave the language model."""
        embeds, mask, video_tokens = self._inputs(frames, input_ids, attention_mask)
        if labels is not None:
            ignored = labels.new_full((labels.shape[0], embeds.shape[1] - labels.shape[1]), IGNORE)
            labels = torch.cat([ignored, labels], dim=1)
        out = self.language(
            inputs_embeds=embeds, attention_mask=mask.long(), position_ids=_positions(mask), labels=labels
        )
        return LanguageOutput(out.loss, out.logits, video_tokens)

    def _inputs(
        self, frames: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Video tokens, then the text: embeddings (B, L, D), mask (B, L), valid video tokens (B,)."""
        video, video_mask = self.video_tokens(frames)
        text = self.language.get_input_embeddings()(input_ids)
        embeds = torch.cat([video.to(text.dtype), text], dim=1)
        return embeds, torch.cat([video_mask, attention_mask.bool()], dim=1), video_mask.sum(dim=1)

    @torch.no_grad()
    def answer(
        self, frames: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy answer ids (B, steps) after left-padded prompts (no key/value cache: answers are short),
        and the valid video tokens of each clip (B,)."""
        embeds, mask, video_tokens = self._inputs(frames, prompt_ids, prompt_mask)
        table = self.language.get_input_embeddings()
        out = []
        for _ in range(steps):
            logits = self.language(
                inputs_embeds=embeds, attention_mask=mask.long(), position_ids=_positions(mask)
            ).logits
            token = logits[:, -1].argmax(dim=-1)
            out.append(token)
            embeds = torch.cat([embeds, table(token)[:, None].to(embeds.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        return torch.stack(out, dim=1), video_tokens


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended positions (padding repeats its neighbour's)."""
    return (mask.long().cumsum(dim=1) - 1).clamp_min(0)

"""Text side of the CLIP models: offline tokenizers and the text towers.

Tokenizers work without a model (the data loader and evaluation use them alone) and never download:
- `bytes`: UTF-8 bytes; needs no file and covers every language (the default);
- `bpe:<tokenizer.json>`: a byte-level BPE trained on the manifest captions by `train_bpe_tokenizer`;
- `hf:<dir>`: a Hugging Face tokenizer (its `tokenizer.json`) and text model saved in a local directory.
All give `encode_batch(captions, max_len) -> (ids (B, max_len) long, mask (B, max_len) bool)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from trajtok.errors import ConfigError
from trajtok.models.sizes import TransformerSize
from trajtok.models.transformer import Transformer

BPE_PAD = "<pad>"
HF_PAD_CANDIDATES = ("[PAD]", "<pad>", "<|endoftext|>")


class TextTokenizer(Protocol):
    vocab_size: int

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]: ...


class ByteTokenizer:
    """UTF-8 bytes shifted by one, 0 = padding; longer captions are cut at `max_len` bytes."""

    vocab_size = 257

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.zeros(len(captions), max_len, dtype=torch.long)
        for row, caption in enumerate(captions):
            data = caption.encode("utf-8")[:max_len]
            ids[row, : len(data)] = torch.tensor(list(data), dtype=torch.long) + 1
        return ids, ids != 0


class SubwordTokenizer:
    """A `tokenizers.Tokenizer` (BPE or a Hugging Face tokenizer.json), truncated and padded to `max_len`."""

    def __init__(self, tokenizer, pad_id: int):  # tokenizer: tokenizers.Tokenizer
        self.tokenizer = tokenizer
        self.pad_id = pad_id
        self.vocab_size = tokenizer.get_vocab_size()

    def encode_batch(self, captions: Sequence[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.tokenizer.enable_truncation(max_length=max_len)
        self.tokenizer.enable_padding(length=max_len, pad_id=self.pad_id)
        encodings = self.tokenizer.encode_batch(list(captions))
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.long).view(len(captions), max_len)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.bool).view(
            len(captions), max_len
        )
        return ids, mask


def train_bpe_tokenizer(
    captions: Iterable[str], path: str | Path, vocab_size: int = 8192, specials: Sequence[str] = (BPE_PAD,)
) -> Path:
    """Train a byte-level BPE on captions (e.g. a manifest's); save a tokenizer.json for `bpe:<path>`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFKC()
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(captions, trainer=trainer)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def _load_tokenizer_json(path: Path, spec: str):
    from tokenizers import Tokenizer

    if not path.is_file():
        raise ConfigError(f"model.text_tokenizer '{spec}': {path} not found")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # a corrupt or foreign file is the user's input problem
        raise ConfigError(
            f"model.text_tokenizer '{spec}': cannot read {path}: {str(err).splitlines()[0]}"
        ) from None


def build_tokenizer(name: str) -> TextTokenizer:
    """`bytes`, `bpe:<tokenizer.json>` or `hf:<local dir>` -> a tokenizer; reads only local files."""
    kind, _, location = name.partition(":")
    if kind == "bytes" and not location:
        return ByteTokenizer()
    if kind == "bpe" and location:
        tokenizer = _load_tokenizer_json(Path(location), name)
        return SubwordTokenizer(tokenizer, pad_id=tokenizer.token_to_id(BPE_PAD) or 0)
    if kind == "hf" and location:
        tokenizer = _load_tokenizer_json(Path(location) / "tokenizer.json", name)
        pad_ids = [tokenizer.token_to_id(t) for t in HF_PAD_CANDIDATES]
        return SubwordTokenizer(tokenizer, pad_id=next((i for i in pad_ids if i is not None), 0))
    raise ConfigError(
        f"model.text_tokenizer '{name}': expected bytes, bpe:<tokenizer.json> or hf:<local dir>"
    )


class TextTower(nn.Module):
    """Token ids (B, L) and mask (B, L) -> pooled text state (B, W): the shared Transformer's CLS output."""

    def __init__(self, vocab_size: int, max_len: int, size: TransformerSize):
        super().__init__()
        self.width = size.width
        self.embed = nn.Embedding(vocab_size, size.width)
        self.position = nn.Parameter(torch.randn(max_len, size.width) * 0.01)
        self.transformer = Transformer(size)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.position.shape[0]:
            raise ValueError(
                f"text of {ids.shape[1]} tokens is longer than the tower's {self.position.shape[0]}"
            )
        x = self.embed(ids) + self.position[: ids.shape[1]]
        return self.transformer(x, mask)[:, 0]


class HFTextTower(nn.Module):
    """A Hugging Face encoder from a local directory; its first token's last state is the pooled text."""

    def __init__(self, directory: str | Path):
        super().__init__()
        try:
            from transformers import AutoConfig, AutoModel
        except ImportError:
            raise ConfigError("model.text_tokenizer 'hf:...': needs the `transformers` package") from None
        try:
            if torch.empty(0).device.type == "meta":  # a shapes-only build (model-info, export): no weights
                self.model = AutoModel.from_config(
                    AutoConfig.from_pretrained(str(directory), local_files_only=True)
                )
            else:
                self.model = AutoModel.from_pretrained(str(directory), local_files_only=True)
        except (OSError, ValueError) as err:
            raise ConfigError(f"model.text_tokenizer 'hf:{directory}': {str(err).splitlines()[0]}") from None
        self.width = self.model.config.hidden_size

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state[:, 0]


def build_text_tower(name: str, tokenizer: TextTokenizer, max_len: int, size: TransformerSize) -> nn.Module:
    """The text tower that goes with tokenizer `name`: an HF model for `hf:`, our transformer otherwise."""
    if name.startswith("hf:"):
        return HFTextTower(name.removeprefix("hf:"))
    return TextTower(tokenizer.vocab_size, max_len, size)

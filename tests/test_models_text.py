"""Text tokenizers (bytes, BPE trained here, a Hugging Face directory made here) and their towers."""

from __future__ import annotations

import pytest
import torch

from trajtok.config import ClipConfig, ModelConfig
from trajtok.errors import ConfigError
from trajtok.models.info import model_summary
from trajtok.models.registry import build_model
from trajtok.models.text import HFTextTower, TextTower, build_tokenizer, train_bpe_tokenizer

torch.set_num_threads(1)
CAPTIONS = [
    "a red square slides to the left",
    "two blue discs bounce off each other",
    "a green triangle rotates slowly",
    "the camera pans across a striped background",
] * 8


def test_byte_tokenizer() -> None:
    ids, mask = build_tokenizer("bytes").encode_batch(["hé", "", "abcdefgh"], max_len=4)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (3, 4)
    assert ids[0, :3].tolist() == [ord("h") + 1, 0xC3 + 1, 0xA9 + 1] and not mask[0, 3]
    assert not mask[1].any() and mask[2].all()  # empty caption: all padding; long one: cut


def test_bpe_tokenizer_trained_on_captions(tmp_path) -> None:
    path = train_bpe_tokenizer(CAPTIONS, tmp_path / "bpe" / "tokenizer.json", vocab_size=300)
    tokenizer = build_tokenizer(f"bpe:{path}")
    ids, mask = tokenizer.encode_batch(["a red square", "a long caption " * 20], max_len=16)
    assert ids.shape == (2, 16) and mask[1].all() and 0 < mask[0].sum() < 16
    assert (ids[0][~mask[0]] == tokenizer.pad_id).all() and tokenizer.vocab_size <= 300
    model = build_model(ModelConfig(text_tokenizer=f"bpe:{path}", text_max_len=16), ClipConfig(size=32))
    assert (
        isinstance(model.text_tower, TextTower)
        and model.text_tower.embed.num_embeddings == tokenizer.vocab_size
    )
    assert model.encode_text(ids, mask).shape == (2, 32)


def test_corrupt_tokenizer_file_is_a_config_error(tmp_path) -> None:
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        build_tokenizer(f"bpe:{bad}")
    with pytest.raises(ConfigError, match="expected bytes"):
        build_tokenizer("sentencepiece:x")


def _tiny_hf_directory(directory) -> None:
    """A BERT-style tokenizer and a 1-layer BERT saved locally, as a user's downloaded model would be."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel

    words = sorted({w for caption in CAPTIONS for w in caption.split()})
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *words])}
    tokenizer = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    directory.mkdir()
    tokenizer.save(str(directory / "tokenizer.json"))
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    BertModel(config).save_pretrained(directory)


def test_hugging_face_tokenizer_and_model_from_a_local_directory(tmp_path) -> None:
    directory = tmp_path / "hf"
    _tiny_hf_directory(directory)
    tokenizer = build_tokenizer(f"hf:{directory}")
    ids, mask = tokenizer.encode_batch(["a red square", "two blue discs bounce"], max_len=8)
    assert ids[0, 0] == 2 and ids[0, mask[0].sum() - 1] == 3  # [CLS] ... [SEP], then [PAD] = 0
    assert (ids[0][~mask[0]] == 0).all()
    model = build_model(ModelConfig(text_tokenizer=f"hf:{directory}"), ClipConfig(size=32)).eval()
    assert isinstance(model.text_tower, HFTextTower) and model.text_tower.width == 32
    embedding = model.encode_text(ids, mask)
    assert embedding.shape == (2, 32) and torch.isfinite(embedding).all()
    # padding is masked: the same caption padded further gives the same embedding
    longer_ids, longer_mask = tokenizer.encode_batch(["a red square", "two blue discs bounce"], max_len=12)
    assert torch.allclose(model.encode_text(longer_ids, longer_mask), embedding, atol=1e-5)
    # shapes-only builds (model-info, checkpoint export) make the HF model on the meta device, without weights
    summary = model_summary(ModelConfig(text_tokenizer=f"hf:{directory}"), ClipConfig(frames=2, size=32))
    assert summary["parameters"]["text_tower"] == sum(p.numel() for p in model.text_tower.parameters())
    with pytest.raises(ConfigError, match="hf:"):
        build_model(ModelConfig(text_tokenizer=f"hf:{tmp_path}"), ClipConfig(size=32))

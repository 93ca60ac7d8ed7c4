"""Tokenizer: the shipped CLIP vocabulary and ComfyUI's prompt semantics, checked against tokens.json."""

from __future__ import annotations

import ast
import gzip
import json
import logging
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from latentgraph.models import tokenizer as tk
from latentgraph.models.tokenizer import (BOS, EOS, ClipBPE, EmbeddingError, PromptTokenizer, SDXLPromptTokenizer,
                                          load_embedding, parse_prompt_weights)

FIXTURES = Path(__file__).parent / "fixtures" / "comfy_reference"
TOKENS = json.loads((FIXTURES / "tokens.json").read_text(encoding="utf-8"))
PROMPTS = TOKENS["prompts"]
NO_DIR_CASES = sorted(TOKENS["sd1_embedding_directory_None"])
OPEN_CLIP = Path("/tmp/oc/x/open_clip/bpe_simple_vocab_16e6.txt.gz")


class NotATensor:
    """Pickled by torch.save as a Python object, so weights_only loading must refuse it."""

    def __init__(self):
        self.payload = [1, 2, 3]


def tiny_embedding() -> dict[str, torch.Tensor]:
    """The 2-vector test embedding of tokens.json ``embedding_setup`` (clip_l drawn first)."""
    g = torch.Generator().manual_seed(0)
    clip_l = torch.randn(2, 768, generator=g)
    return {"clip_l": clip_l, "clip_g": torch.randn(2, 1280, generator=g)}


@pytest.fixture(scope="module")
def embedding_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("embeddings")
    save_file(tiny_embedding(), str(folder / "tinyemb.safetensors"))
    return folder


@pytest.fixture(scope="module")
def sd1(embedding_dir) -> PromptTokenizer:
    return PromptTokenizer(embedding_dir=embedding_dir)


@pytest.fixture(scope="module")
def sdxl(embedding_dir) -> SDXLPromptTokenizer:
    return SDXLPromptTokenizer(embedding_dir=embedding_dir)


def assert_chunks_match(got: list[list[tuple]], expected: list[dict], vectors: torch.Tensor | None = None):
    """Our (token, weight, word_id) chunks == the tokens.json chunks; embedding slots must hold
    the rows of ``vectors`` in order."""
    assert len(got) == len(expected), "number of 77-token chunks"
    rows = iter(vectors if vectors is not None else [])
    for n, (chunk, ref) in enumerate(zip(got, expected)):
        assert [w for _, w, _ in chunk] == ref["weights"], f"chunk {n} weights"
        assert [i for _, _, i in chunk] == ref["word_ids"], f"chunk {n} word_ids"
        assert len(chunk) == len(ref["ids"]) == 77
        for pos, ((token, _, _), want) in enumerate(zip(chunk, ref["ids"])):
            if isinstance(want, dict):
                assert isinstance(token, torch.Tensor), f"chunk {n} slot {pos} should be a vector"
                assert list(token.shape) == want["embedding_vector_shape"]
                assert token.sum().item() == pytest.approx(want["sum"], rel=1e-6, abs=1e-5)
                assert torch.equal(token, next(rows))
            else:
                assert token == want, f"chunk {n} slot {pos}"


# -- tokens.json, every prompt ------------------------------------------------------------------
def test_fixture_has_29_prompts():
    assert len(PROMPTS) == 29
    assert set(TOKENS["sd1"]) == set(TOKENS["sdxl"]) == set(PROMPTS)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_parse_matches_comfy(name):
    got = parse_prompt_weights(PROMPTS[name]["text"])
    assert [list(seg) for seg in got] == PROMPTS[name]["parsed_segments"]


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_sd1_matches_comfy(sd1, name):
    got = sd1.tokenize_with_weights(PROMPTS[name]["text"], return_word_ids=True)
    assert_chunks_match(got, TOKENS["sd1"][name]["l"], tiny_embedding()["clip_l"])


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_sdxl_matches_comfy(sdxl, name):
    got = sdxl.tokenize_with_weights(PROMPTS[name]["text"], return_word_ids=True)
    assert set(got) == {"g", "l"}
    assert_chunks_match(got["g"], TOKENS["sdxl"][name]["g"], tiny_embedding()["clip_g"])
    assert_chunks_match(got["l"], TOKENS["sdxl"][name]["l"], tiny_embedding()["clip_l"])


@pytest.mark.parametrize("name", NO_DIR_CASES)
def test_without_embedding_dir_embedding_is_text(name):
    got = PromptTokenizer(embedding_dir=None).tokenize_with_weights(PROMPTS[name]["text"], return_word_ids=True)
    assert_chunks_match(got, TOKENS["sd1_embedding_directory_None"][name]["l"])


# -- specific behaviour ---------------------------------------------------------------------------
def test_reference_prompt(sd1):
    ref = TOKENS["reference_prompt"]
    (chunk,) = sd1.tokenize_with_weights(ref["text"])
    ids = [t for t, _ in chunk]
    assert ids == [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407] + [49407] * 67
    assert ids[:10] == ref["clip_l_ids_unpadded"]
    assert all(w == 1.0 for _, w in chunk)


def test_pairs_without_word_ids_and_empty_prompt(sd1):
    (chunk,) = sd1.tokenize_with_weights("")
    assert chunk == [(BOS, 1.0), (EOS, 1.0)] + [(EOS, 1.0)] * 75
    assert all(len(pair) == 2 for pair in sd1.tokenize_with_weights("(cat:1.3) dog")[0])


def test_weights_syntax():
    assert parse_prompt_weights("((cat))") == [("cat", 1.2100000000000002)]
    assert parse_prompt_weights("(a (b:0.5) c:1.2)") == [("a ", 1.2), ("b", 0.5), (" c", 1.2)]
    assert parse_prompt_weights("\\(x\\) (y)") == [("(x) ", 1.0), ("y", 1.1)]
    assert parse_prompt_weights("(cat:1.3 dog") == [("(cat:1.3 dog", 1.0)]
    assert parse_prompt_weights("(:2)") == [(":2", 1.1)]  # a leading colon is text
    assert parse_prompt_weights("a) (b)") == [("a) (b)", 1.0)]  # ComfyUI: a stray ")" disables the rest


def test_missing_embedding_is_dropped_with_warning(sd1, caplog):
    with caplog.at_level(logging.WARNING, logger=tk.__name__):
        (chunk,) = sd1.tokenize_with_weights("embedding:foo")
    assert [t for t, _ in chunk[:2]] == [BOS, EOS]
    assert "embedding:foo" in caplog.text


def test_sdxl_pads_g_with_zero_and_l_with_end(sdxl):
    out = sdxl.tokenize_with_weights("cat")
    assert [t for t, _ in out["g"][0][:4]] == [BOS, 2368, EOS, 0]
    assert [t for t, _ in out["l"][0][:4]] == [BOS, 2368, EOS, EOS]


def test_pad_with_end_conflict_is_an_error():
    with pytest.raises(ValueError, match="pad_with_end"):
        PromptTokenizer(pad_token=0)


def test_untokenize(sd1):
    chunk = sd1.tokenize_with_weights("a embedding:tinyemb dog")[0]
    strings = [s for _, s in sd1.untokenize(chunk[:5])]
    assert strings == ["<|startoftext|>", "a</w>", None, None, "dog</w>"]


# -- embedding files ------------------------------------------------------------------------------
def test_pickled_object_embedding_is_refused(tmp_path):
    torch.save(NotATensor(), tmp_path / "evil.pt")
    with pytest.raises(EmbeddingError, match="refused.*weights_only"):
        load_embedding("evil", tmp_path, 768, "clip_l")
    with pytest.raises(EmbeddingError):
        PromptTokenizer(embedding_dir=tmp_path).tokenize_with_weights("a embedding:evil")


def test_a1111_pt_embedding_loads_weights_only(tmp_path):
    vectors = torch.randn(3, 768, generator=torch.Generator().manual_seed(1))
    torch.save({"string_to_param": {"*": vectors}, "string_to_token": {"*": 265}, "name": "style", "step": 500},
               tmp_path / "style.pt")
    got = load_embedding("style", tmp_path, 768, "clip_l")
    assert torch.equal(got, vectors)
    chunk = PromptTokenizer(embedding_dir=tmp_path).tokenize_with_weights("(embedding:style:1.2)", True)[0]
    assert [i for *_, i in chunk[:5]] == [0, 1, 1, 1, 0]
    assert all(torch.equal(chunk[k + 1][0], vectors[k]) and chunk[k + 1][1] == 1.2 for k in range(3))


def test_embedding_file_forms(tmp_path, embedding_dir):
    sub = tmp_path / "sub"
    sub.mkdir()
    save_file({"emb_params": torch.ones(4, 768)}, str(sub / "params.safetensors"))
    torch.save(torch.ones(768), tmp_path / "single.bin")
    assert load_embedding("params", tmp_path, 768, "clip_l").shape == (4, 768)  # found in a subfolder
    assert load_embedding("single", tmp_path, 768, "clip_l").shape == (1, 768)  # 1-D: one vector
    assert torch.equal(load_embedding("tinyemb", embedding_dir, 1280, "clip_g"), tiny_embedding()["clip_g"])
    assert load_embedding("tinyemb.safetensors", embedding_dir, 768, "clip_l").shape == (2, 768)
    assert load_embedding("nothing", tmp_path, 768, "clip_l") is None
    outside = Path(os.path.relpath(embedding_dir / "tinyemb", tmp_path))  # "../embeddings0/tinyemb"
    assert (tmp_path / outside).with_suffix(".safetensors").is_file()
    assert load_embedding(str(outside), tmp_path, 768, "clip_l") is None  # no reading outside the folder


def test_safetensors_preferred_over_pt(tmp_path):
    save_file({"emb_params": torch.zeros(1, 768)}, str(tmp_path / "x.safetensors"))
    torch.save({"string_to_param": {"*": torch.ones(1, 768)}}, tmp_path / "x.pt")
    assert load_embedding("x", tmp_path, 768, "clip_l").sum() == 0


# -- the shipped vocabulary -----------------------------------------------------------------------
def test_shipped_files_are_used(tmp_path):
    vocab = json.loads((tk.VOCAB_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert len(vocab) == 49408 and vocab["<|startoftext|>"] == BOS and vocab["<|endoftext|>"] == EOS
    assert ClipBPE().encode("cat") == [2368]
    # swap two ids in a copy: the tokenizer must follow the files it is given
    vocab["cat</w>"], vocab["!"] = vocab["!"], vocab["cat</w>"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_bytes((tk.VOCAB_DIR / "merges.txt").read_bytes())
    assert ClipBPE(tmp_path).encode("cat") == [0]


def _byte_alphabet() -> list[str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(shifted))]


@pytest.mark.skipif(not OPEN_CLIP.exists(), reason="open-clip-torch's BPE file is not extracted at /tmp/oc")
def test_vocabulary_rederived_from_open_clip():
    lines = gzip.open(OPEN_CLIP).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    alphabet = _byte_alphabet()
    tokens = alphabet + [c + "</w>" for c in alphabet] + [m.replace(" ", "") for m in merges]
    vocab = {t: i for i, t in enumerate(tokens + ["<|startoftext|>", "<|endoftext|>"])}
    assert len(merges) == 48894 and len(vocab) == 49408
    vocab_text = json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert (tk.VOCAB_DIR / "vocab.json").read_bytes() == vocab_text.encode("utf-8")
    merges_text = "#version: 0.2\n" + "".join(m + "\n" for m in merges)
    assert (tk.VOCAB_DIR / "merges.txt").read_bytes() == merges_text.encode("utf-8")


def test_models_never_import_graph_or_nodes():
    tree = ast.parse(Path(tk.__file__).read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):  # resolve "from ..x import y" against latentgraph.models
            base = ["latentgraph", "models"][: 3 - node.level] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names += [module] + [f"{module}.{a.name}" for a in node.names]
    assert not [m for m in names if m.startswith(("latentgraph.graph", "latentgraph.nodes"))]

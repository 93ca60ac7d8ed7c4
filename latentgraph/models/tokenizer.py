"""CLIP prompt tokenizer with ComfyUI's prompt semantics: weights, chunking, textual inversion.

A prompt becomes a list of 77-token chunks ``[BOS, 75 tokens, EOS]`` of ``(token, weight)`` pairs
(or ``(token, weight, word_id)``), exactly as ComfyUI's ``SDTokenizer.tokenize_with_weights``
returns them; ``tests/fixtures/comfy_reference/tokens.json`` is the reference. A token is an int
id or, for ``embedding:name``, one row of a textual-inversion tensor.

The BPE itself is transformers' ``CLIPTokenizer`` built from the vocabulary shipped in
``latentgraph/data/clip_tokenizer`` (see the README there); nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Iterable, Sequence

import torch

log = logging.getLogger(__name__)

BOS, EOS = 49406, 49407
MAX_WORD_LENGTH = 8  # groups this long may be split across chunks; shorter ones move whole
EMBEDDING_PREFIX = "embedding:"
EMBEDDING_SUFFIXES = ("", ".safetensors", ".pt", ".bin")  # ComfyUI's search order
VOCAB_DIR = Path(__file__).resolve().parent.parent / "data" / "clip_tokenizer"


class EmbeddingError(ValueError):
    """A textual-inversion file exists but cannot be used."""


# -- prompt weights ------------------------------------------------------------------------------
# Structural parentheses are these two objects; an escaped ``\(`` or ``\)`` stays a plain character,
# so no placeholder character can collide with the user's text.
_OPEN, _CLOSE = object(), object()


def _lex(text: str) -> list:
    """Characters of ``text`` with unescaped parentheses replaced by _OPEN/_CLOSE."""
    items, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "()":
            items.append(text[i + 1])  # the backslash is dropped, the paren is literal text
            i += 2
            continue
        items.append(_OPEN if c == "(" else _CLOSE if c == ")" else c)
        i += 1
    return items


def _render(items: Iterable) -> str:
    return "".join("(" if x is _OPEN else ")" if x is _CLOSE else x for x in items)


def _top_level_parts(items: list) -> list[list]:
    """Split into runs of text and balanced ``( ... )`` groups at nesting depth 0.

    Mirrors ComfyUI's scanner, quirks included: an unclosed group runs to the end of the text,
    and a stray ``)`` drives the depth negative, after which the next ``(`` only brings it back
    to 0 and is kept as text.
    """
    parts, cur, depth = [], [], 0
    for x in items:
        if x is _OPEN:
            if depth == 0 and cur:
                parts.append(cur)
                cur = []
            cur.append(x)
            depth += 1
        elif x is _CLOSE:
            depth -= 1
            cur.append(x)
            if depth == 0:
                parts.append(cur)
                cur = []
        else:
            cur.append(x)
    if cur:
        parts.append(cur)
    return parts


def _weigh(items: list, weight: float, out: list[tuple[str, float]]) -> None:
    for part in _top_level_parts(items):
        if len(part) < 2 or part[0] is not _OPEN or part[-1] is not _CLOSE:
            out.append((_render(part), weight))
            continue
        inner, inner_weight = part[1:-1], weight * 1.1  # a bare group multiplies by 1.1
        colon = max((i for i, x in enumerate(inner) if x == ":"), default=-1)
        if colon > 0:  # "(x:w)" sets the weight; a colon in first place is just text
            try:
                inner_weight = float(_render(inner[colon + 1:]))
                inner = inner[:colon]
            except ValueError:
                pass  # "(a:b)" with b not a number: plain group, colon kept as text
        _weigh(inner, inner_weight, out)


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """ComfyUI weight syntax -> [(text, weight)]: ``(x)`` x1.1 per level, ``(x:1.3)`` sets the
    group's weight, ``\\(`` ``\\)`` are literal parentheses, unbalanced ``(`` stays text."""
    out: list[tuple[str, float]] = []
    _weigh(_lex(text), 1.0, out)
    return out


def weigh_unescaped(text: str, weight: float = 1.0) -> list[tuple[str, float]]:
    """The weighting of parse_prompt_weights on text whose escapes were already replaced (every
    parenthesis is syntax), starting at ``weight``: ComfyUI's sd1_clip.token_weights."""
    out: list[tuple[str, float]] = []
    _weigh([_OPEN if c == "(" else _CLOSE if c == ")" else c for c in text], weight, out)
    return out


# -- textual-inversion embeddings ----------------------------------------------------------------
def _embedding_dirs(embedding_dir) -> list[Path]:
    """The configured folders and, like ComfyUI, every folder below them (sorted, so the first
    match is the same on every machine)."""
    roots = [embedding_dir] if isinstance(embedding_dir, (str, os.PathLike)) else list(embedding_dir)
    dirs: list[Path] = []
    for root in map(Path, roots):
        below = sorted(Path(sub) for sub, _, _ in os.walk(root, followlinks=True))
        dirs += [root] + [d for d in below if d != root]
    return dirs


def find_embedding(name: str, embedding_dir) -> Path | None:
    """The file for ``embedding:name``: name, name.safetensors, name.pt or name.bin in the folders."""
    for folder in _embedding_dirs(embedding_dir):
        folder = folder.resolve()
        base = (folder / name).resolve()
        if not base.is_relative_to(folder):
            continue  # "../x" must not read outside the embeddings folder
        for suffix in EMBEDDING_SUFFIXES:
            path = base.with_name(base.name + suffix)
            if path.is_file():
                return path
    return None


def _read_embedding_file(path: Path):
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        # never full pickle: an embedding file from the internet must not run code
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = str(e).strip().splitlines()[0]
        raise EmbeddingError(
            f"embedding file {path} is refused: it cannot be read with torch.load(weights_only=True), "
            f"either because it holds pickled Python objects (which could run code) or because it is "
            f"not a torch file. Convert it to .safetensors from a trusted environment. ({reason})"
        ) from e


def _pick_vectors(data, embedding_size: int, embedding_key: str, path: Path) -> torch.Tensor:
    """The vectors inside a loaded embedding file, in ComfyUI's order of preference."""
    if isinstance(data, torch.Tensor):
        return data
    if isinstance(data, list):  # a list of {name: tensor}; keep the tensors of the right width
        rows = [t.reshape(-1, t.shape[-1]) for d in data for t in d.values()
                if isinstance(t, torch.Tensor) and t.shape[-1] == embedding_size]
        if rows:
            return torch.cat(rows)
    elif isinstance(data, dict):
        if isinstance(data.get("string_to_param"), dict) and data["string_to_param"]:  # A1111 .pt
            return next(iter(data["string_to_param"].values()))
        if embedding_key in data:  # SDXL files: {"clip_l": ..., "clip_g": ...}
            return data[embedding_key]
        for suffix in (".string_to_param.*", "." + embedding_key):  # embeddings bundled in a LoRA
            bundled = [v for k, v in data.items() if k.startswith("bundle_emb.") and k.endswith(suffix)]
            if bundled:
                return torch.cat(bundled)
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if tensors:  # "emb_params" or any single tensor
            return data["emb_params"] if "emb_params" in data else tensors[0]
    raise EmbeddingError(f"embedding file {path} holds no embedding vectors ({type(data).__name__})")


def load_embedding(name: str, embedding_dir, embedding_size: int, embedding_key: str) -> torch.Tensor | None:
    """Textual-inversion vectors for ``embedding:name`` as (n_vectors, width), or None if no file.

    ``width`` is ``embedding_size`` for a matching file; a file made for another text encoder keeps
    its own width and is logged, and the text encoder skips such vectors as ComfyUI does.
    """
    path = find_embedding(name, embedding_dir)
    if path is None:
        return None
    vectors = _pick_vectors(_read_embedding_file(path), embedding_size, embedding_key, path)
    vectors = vectors.detach().to("cpu").reshape(-1, vectors.shape[-1])  # (n_vectors, width)
    if vectors.shape[-1] != embedding_size:
        log.warning("embedding %s has width %d, not %d (%s); the text encoder will skip it",
                    name, vectors.shape[-1], embedding_size, embedding_key)
    return vectors


# -- BPE -------------------------------------------------------------------------------------------
class ClipBPE:
    """CLIP's byte-level BPE on the shipped vocabulary, built on first use (thread-safe).

    The same ``tokenizers`` pipeline transformers' CLIPTokenizer builds (NFC, whitespace
    collapsed, lower case; CLIP's split pattern; byte-level BPE with ``</w>`` word ends; the two
    special tokens), made here with the ``tokenizers`` library alone: transformers took 2.2 s
    to import. tests/test_cli_imports.py checks it against CLIPTokenizer token for token."""

    def __init__(self, vocab_dir: str | os.PathLike = VOCAB_DIR):
        self.vocab_dir = Path(vocab_dir)
        self._tokenizer = None
        self._lock = threading.Lock()

    def _load(self):
        from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
        from tokenizers.models import BPE

        vocab = json.loads((self.vocab_dir / "vocab.json").read_text(encoding="utf-8"))
        lines = (self.vocab_dir / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0 is "#version: 0.2"
        tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False, unk_token="<|endoftext|>"))
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|"
                                       r"[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False)])
        # the special tokens match as written in a prompt, before normalisation (as transformers adds them)
        tok.add_special_tokens([AddedToken(t, normalized=False, special=True)
                                for t in ("<|startoftext|>", "<|endoftext|>")])
        if tok.get_vocab_size() != len(vocab) or tok.token_to_id("<|endoftext|>") != EOS:
            raise RuntimeError(f"the CLIP tokenizer did not take the vocabulary in {self.vocab_dir}")
        return tok

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = self._load()
        return self._tokenizer

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text`` without BOS/EOS (lower-cased, NFC, whitespace collapsed)."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def token_string(self, token_id: int) -> str:
        return self.tokenizer.id_to_token(int(token_id))


# -- prompts -> chunks -----------------------------------------------------------------------------
class PromptTokenizer:
    """One CLIP's tokenizer with ComfyUI semantics: ``tokenize_with_weights(text)`` -> chunks.

    ``pad_with_end`` pads with EOS (SD1 CLIP-L); with ``pad_with_end=False`` it pads with
    ``pad_token`` (SDXL's CLIP-G uses 0). ``embedding_dir`` (a folder or a list of folders)
    enables ``embedding:name``; with None that text is tokenized as plain words.
    """

    def __init__(self, pad_token: int = EOS, max_length: int = 77, embedding_dir=None,
                 embedding_size: int = 768, embedding_key: str = "clip_l", pad_with_end: bool = True,
                 *, bpe: ClipBPE | None = None):
        if pad_with_end and pad_token != EOS:
            raise ValueError(f"pad_with_end=True pads with the end token {EOS}; "
                             f"pass pad_with_end=False to pad with {pad_token}")
        if max_length < 3:
            raise ValueError(f"max_length must leave room for BOS, one token and EOS, got {max_length}")
        self.pad_token = EOS if pad_with_end else pad_token
        self.max_length = max_length
        self.embedding_dir = embedding_dir
        self.embedding_size = embedding_size
        self.embedding_key = embedding_key
        self.bpe = bpe if bpe is not None else ClipBPE()

    # -- words -> token groups
    def _words(self, segment: str) -> list[str]:
        """A weighted segment cut before each " embedding:" / "\\nembedding:" (the space goes)."""
        pieces = re.split(f"[ \n](?={re.escape(EMBEDDING_PREFIX)})", segment)
        return [p for p in pieces if p]

    def _load(self, name: str) -> torch.Tensor | None:
        if not name:
            return None
        return load_embedding(name, self.embedding_dir, self.embedding_size, self.embedding_key)

    def _embedding(self, word: str) -> tuple[torch.Tensor | None, str]:
        """``embedding:name rest`` -> (vectors or None, rest of the text to tokenize)."""
        name, *rest = word[len(EMBEDDING_PREFIX):].strip("\n").split() or [""]
        leftover = " ".join(rest)
        vectors = self._load(name)
        if vectors is None and name.rstrip(",") != name:
            # "embedding:foo," — the commas belong to the prompt, not the name
            bare = name.rstrip(",")
            vectors, leftover, name = self._load(bare), f"{name[len(bare):]} {leftover}", bare
        if vectors is None:
            log.warning("embedding:%s not found in %s; it is left out of the prompt", name, self.embedding_dir)
        return vectors, leftover

    def _groups(self, text: str) -> list[list[tuple]]:
        """Token groups of (token, weight): one per weighted segment (cut again before each
        ``embedding:``), one per embedding.
        A group that tokenizes to nothing (a lone space) still takes a word id, as in ComfyUI."""
        groups = []
        for segment, weight in parse_prompt_weights(text):
            for word in self._words(segment):
                if word.startswith(EMBEDDING_PREFIX) and self.embedding_dir is not None:
                    vectors, word = self._embedding(word)
                    if vectors is not None:
                        groups.append([(v, weight) for v in vectors])  # one slot per vector
                    if not word:
                        continue
                groups.append([(t, weight) for t in self.bpe.encode(word)])
        return groups

    # -- token groups -> chunks
    def _close(self, chunk: list) -> None:
        chunk.append((EOS, 1.0, 0))
        chunk.extend([(self.pad_token, 1.0, 0)] * (self.max_length - len(chunk)))

    def _chunks(self, groups: Sequence[list[tuple]]) -> list[list[tuple]]:
        chunks = [[(BOS, 1.0, 0)]]
        body = self.max_length - 2  # tokens between BOS and EOS
        for word_id, group in enumerate(groups, start=1):
            rest = [(t, w, word_id) for t, w in group]
            # long groups are cut at chunk edges; short ones move whole to the next chunk
            # (a group that could never fit one chunk is cut too, instead of looping forever)
            splittable = len(rest) >= MAX_WORD_LENGTH or len(rest) > body
            while rest:
                chunk = chunks[-1]
                room = self.max_length - 1 - len(chunk)  # keep one slot for EOS
                if len(rest) <= room:
                    chunk.extend(rest)
                    break
                if splittable:
                    chunk.extend(rest[:room])
                    rest = rest[room:]
                self._close(chunk)
                chunks.append([(BOS, 1.0, 0)])
        self._close(chunks[-1])
        return chunks

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False) -> list[list[tuple]]:
        """Prompt -> chunks of ``max_length`` (token, weight[, word_id]); word_id 0 marks
        BOS/EOS/padding, k the k-th token group (weighted word run or embedding)."""
        chunks = self._chunks(self._groups(text))
        if return_word_ids:
            return chunks
        return [[(t, w) for t, w, _ in chunk] for chunk in chunks]

    def untokenize(self, chunk: Sequence[tuple]) -> list[tuple[tuple, str | None]]:
        """[(pair, BPE string)] for reading a chunk; embedding vectors have no string (None)."""
        return [(pair, None if isinstance(pair[0], torch.Tensor) else self.bpe.token_string(pair[0]))
                for pair in chunk]


class SDXLPromptTokenizer:
    """SDXL's two tokenizers: ``{"g": CLIP-G chunks (pad 0), "l": CLIP-L chunks (pad EOS)}``."""

    def __init__(self, embedding_dir=None, max_length: int = 77):
        bpe = ClipBPE()  # both CLIPs use the same vocabulary: load it once
        self.l = PromptTokenizer(max_length=max_length, embedding_dir=embedding_dir, bpe=bpe)
        self.g = PromptTokenizer(pad_token=0, max_length=max_length, embedding_dir=embedding_dir,
                                 embedding_size=1280, embedding_key="clip_g", pad_with_end=False, bpe=bpe)

    def tokenize_with_weights(self, text: str, return_word_ids: bool = False) -> dict[str, list[list[tuple]]]:
        return {"g": self.g.tokenize_with_weights(text, return_word_ids),
                "l": self.l.tokenize_with_weights(text, return_word_ids)}

    def untokenize(self, chunk: Sequence[tuple]) -> list[tuple[tuple, str | None]]:
        return self.g.untokenize(chunk)

"""The tokenizer of a checkpoint as GGUF metadata (llama.cpp's ``tokenizer.ggml.*`` keys).

Two kinds, read with the ``gguf`` package's vocab classes where they fit:

* SentencePiece (``tokenizer.model``: Llama 1/2, Mistral, TinyStories): ``tokenizer.ggml.model =
  llama`` with pieces, scores and token types (``gguf.SentencePieceVocab``);
* byte-level BPE (``tokenizer.json``: GPT-2, Llama 3, Qwen2, SmolLM): ``gpt2`` with tokens,
  merges and token types, and llama.cpp's pre-tokenizer name chosen from the tokenizer's
  split regex (:data:`PRE_TOKENIZERS`).

Special token ids, ``add_bos``/``add_eos`` and the chat template come from
``gguf.SpecialVocab``.
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import OneBitError

GPT2_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
#: split regexes of tokenizer.json → llama.cpp's pre-tokenizer name
PRE_TOKENIZERS = {
    GPT2_REGEX: "gpt-2",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "llama-bpe",
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
    "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": "qwen2",
}


def _regexes(node) -> list[str]:
    if not isinstance(node, dict):
        return []
    if node.get("type") == "Sequence":
        return [r for p in node.get("pretokenizers", []) for r in _regexes(p)]
    if node.get("type") == "Split":
        pat = node.get("pattern", {})
        return [pat.get("Regex") or pat.get("String") or ""]
    if node.get("type") == "ByteLevel" and node.get("use_regex", True):
        return [GPT2_REGEX]
    return []


def bpe_pre_name(tok_json: dict) -> str:
    regexes = _regexes(tok_json.get("pre_tokenizer"))
    for r in regexes:
        if r in PRE_TOKENIZERS:
            return PRE_TOKENIZERS[r]
    raise OneBitError("the tokenizer's pre-tokenizer is not one llama.cpp knows by name "
                      f"(split regex {regexes[:1] or 'none'}); export supports GPT-2, Llama-3, Qwen2 "
                      "and SmolLM byte-level BPE and SentencePiece tokenizers")


def spm_scores_from_merges(tok_json: dict, tokens) -> list[float]:
    """SentencePiece scores for a SentencePiece-style BPE saved as tokenizer.json.

    llama.cpp's SentencePiece tokenizer merges the adjacent pair whose result has the highest
    score; the BPE merge list is in that priority order, so a merged token scores minus the rank
    of its first merge.  Pieces no merge makes (characters, bytes, specials) score 0, except
    multi-character pieces no merge reaches, which come last.
    """
    rank: dict[str, int] = {}
    for i, m in enumerate(tok_json.get("model", {}).get("merges", [])):
        a, b = m.split(" ", 1) if isinstance(m, str) else m
        rank.setdefault(a + b, i)
    out = []
    for t in tokens:
        text = t.decode("utf-8", errors="replace") if isinstance(t, bytes) else t
        if text in rank:
            out.append(-float(rank[text]))
        elif len(text) <= 1 or text.startswith("<"):
            out.append(0.0)
        else:
            out.append(-1e9)
    return out


def add_tokenizer(writer, path: str | Path, vocab_size: int, pre: str | None = None) -> str:
    """Write the tokenizer found in ``path`` into ``writer``; return its kind ('llama' or 'gpt2').

    ``pre``: llama.cpp's pre-tokenizer name when known (a model read from a GGUF file keeps its
    own, e.g. 'smollm'); otherwise it is chosen from the tokenizer's split regex."""
    import gguf

    path = Path(path)
    if (path / "tokenizer.model").is_file():
        vocab = gguf.SentencePieceVocab(path)
        tokens, scores, types = zip(*vocab.all_tokens())
        kind = "llama"
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    elif (path / "tokenizer.json").is_file() and json.loads(
            (path / "tokenizer.json").read_text(encoding="utf-8")).get("model", {}).get("byte_fallback"):
        # SentencePiece-style BPE saved as tokenizer.json only (e.g. a Llama read from a GGUF file)
        try:
            vocab = gguf.LlamaHfVocab(path)
        except (FileNotFoundError, TypeError, ValueError) as e:
            raise OneBitError(f"'{path}': cannot convert tokenizer.json for llama.cpp ({e})")
        tokens, _, types = zip(*vocab.all_tokens())
        scores = spm_scores_from_merges(json.loads((path / "tokenizer.json").read_text(encoding="utf-8")),
                                        tokens)
        kind = "llama"
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
    elif (path / "tokenizer.json").is_file():
        tj = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
        model = tj.get("model", {})
        if model.get("type") != "BPE":
            raise OneBitError(f"'{path}': tokenizer.json is not a BPE tokenizer and there is no "
                              "tokenizer.model; export cannot write this tokenizer")
        vocab = dict(model["vocab"])
        special = {}
        for t in tj.get("added_tokens", []):
            vocab.setdefault(t["content"], t["id"])
            special[t["id"]] = t.get("special", False)
        by_id = {i: s for s, i in vocab.items()}
        n = max(by_id) + 1
        tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n)]
        types = [int(gguf.TokenType.CONTROL if special.get(i) else gguf.TokenType.USER_DEFINED
                     if i in special else gguf.TokenType.NORMAL if i in by_id else gguf.TokenType.UNUSED)
                 for i in range(n)]
        scores = None
        kind = "gpt2"
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre or bpe_pre_name(tj))
    else:
        raise OneBitError(f"'{path}' has no tokenizer (tokenizer.model or tokenizer.json); "
                          "export needs one to write a runnable GGUF")
    tokens = list(tokens)
    if len(tokens) < vocab_size:   # embedding rows beyond the tokenizer: padding tokens
        extra = vocab_size - len(tokens)
        tokens += [f"[PAD{i}]" for i in range(len(tokens), vocab_size)]
        types = list(types) + [int(gguf.TokenType.UNUSED)] * extra
        scores = None if scores is None else list(scores) + [-1000.0] * extra
    if len(tokens) > vocab_size:
        raise OneBitError(f"the tokenizer has {len(tokens)} tokens but the model only {vocab_size} embeddings")
    writer.add_token_list([t.encode("utf-8") if isinstance(t, str) else t for t in tokens])
    if scores is not None:
        writer.add_token_scores(list(scores))
    writer.add_token_types([int(t) for t in types])
    import logging

    quiet = logging.getLogger("gguf.vocab")   # it warns about template details llama.cpp does not use
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        gguf.SpecialVocab(path, load_merges=(kind == "gpt2"), n_vocab=vocab_size).add_to_gguf(writer, quiet=True)
    finally:
        quiet.setLevel(level)
    return kind

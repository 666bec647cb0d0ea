"""Deduplication of RL prompts: exact (normalised-text hash) and near-duplicate (MinHash LSH).

Ring-lite (arXiv 2506.14731, RL data curation) deduplicates at the character level and at the
semantic level. The report does not say how; we take character level as an exact match of the
normalised problem text (NFKC, case-folded, whitespace collapsed, SHA-1), and we APPROXIMATE the
semantic level with MinHash LSH over word shingles (datasketch): it catches re-worded copies that
share most of their word n-grams, not paraphrases with different words, which an embedding model
would catch. Tokens keep math symbols (`x+1` and `x-1` differ), so `Solve x+1=2` is not taken as a
copy of `Solve x-1=2` unless the rest of a long problem matches.

The first occurrence in input order is kept; a later copy is removed with the id of the row it
copies and, for near duplicates, the MinHash-estimated Jaccard similarity. LSH candidates are
confirmed by that estimate (>= `threshold`) to cut LSH false positives. Signatures are computed in
parallel (`num_proc`); the keep/drop decisions need the whole index and run in one process.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Any

import datasets
import numpy as np
import xxhash
from datasketch import MinHash, MinHashLSH

from ring_lightning.prepare.rows import (
    FEATURES, MARK_COLUMNS, Removal, StageRunner, is_kept, mark, rebatch, unbatch, user_text,
)

_TOKEN = re.compile(r"\w+|[^\w\s]")
_MIX = np.uint64(0x9E3779B97F4A7C15)
SCHEME = "affine32"


def _identity(value: int) -> int:
    """MinHash input hash: shingles are already hashed (`shingle_hashes`); the affine32 scheme
    mixes its inputs with the MurmurHash3 finalizer, so pre-hashed ints are safe to feed."""
    return value


class Deduplicator:
    """The dedup stage.

    Args:
        enabled: run this stage.
        exact: drop rows whose normalised problem text equals an earlier row's.
        near: drop rows whose MinHash-estimated Jaccard similarity to an earlier kept row is at
            least `threshold` (MinHash LSH; see the module docstring for what this approximates).
        threshold: Jaccard similarity of word-shingle sets above which two problems are copies.
        num_perm: MinHash permutations (signature length); more is more precise and slower.
        shingle_size: words per shingle (problems shorter than this are one shingle).
        seed: MinHash seed (fixed, so runs are reproducible).
    """

    name = "dedup"

    def __init__(self, enabled: bool = True, exact: bool = True, near: bool = True, threshold: float = 0.8,
                 num_perm: int = 128, shingle_size: int = 3, seed: int = 1):
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"dedup.threshold must be in (0, 1], got {threshold}")
        if shingle_size < 1 or num_perm < 2:
            raise ValueError(f"dedup.shingle_size must be >= 1 and dedup.num_perm >= 2, got {shingle_size}, {num_perm}")
        if near:
            try:
                MinHashLSH(threshold=threshold, num_perm=num_perm)
            except ValueError as e:
                raise ValueError(f"dedup: threshold={threshold} with num_perm={num_perm} is not a valid LSH setting "
                                 f"({e}); lower the threshold or raise num_perm") from None
        self.enabled = enabled
        self.exact = exact
        self.near = near
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle_size = shingle_size
        self.seed = seed
        self._hasher: MinHash | None = None

    def apply(self, ds, runner: StageRunner):
        """Signatures in parallel, then keep/drop decisions in one ordered pass."""
        features = datasets.Features({**FEATURES, "_dedup_hash": datasets.Value("string"),
                                      "_dedup_sig": datasets.List(datasets.Value("uint32"))})
        ds = runner.map(ds, self.features, desc="dedup: signatures", features=features,
                        input_columns=["messages", "_stage"])
        return runner.map(ds, self.resolver(), desc="dedup: resolve", parallel=False,
                          remove_columns=["_dedup_hash", "_dedup_sig"], features=FEATURES,
                          input_columns=list(DedupResolver.COLUMNS))

    def report(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "num_perm": self.num_perm, "shingle_size": self.shingle_size}

    def close(self) -> None:
        """Nothing to release."""

    # -- parallel part: one signature per row ------------------------------------------------
    def features(self, messages_batch: list, stages: list[str]) -> dict[str, list]:
        """Batched map: `_dedup_hash` (exact key) and `_dedup_sig` (MinHash signature) per kept row."""
        hashes, sigs = [], []
        for messages, stage in zip(messages_batch, stages):
            if stage != "":
                hashes.append("")
                sigs.append([])
                continue
            norm = normalize(user_text({"messages": messages}))
            hashes.append(hashlib.sha1(norm.encode()).hexdigest() if self.exact else "")
            sigs.append(self.signature(norm).tolist() if self.near else [])
        return {"_dedup_hash": hashes, "_dedup_sig": sigs}

    def signature(self, normalized_text: str) -> np.ndarray:
        if self._hasher is None:
            self._hasher = MinHash(num_perm=self.num_perm, seed=self.seed, hashfunc=_identity, scheme=SCHEME)
        m = self._hasher
        m.clear()
        m.update_batch(shingle_hashes(normalized_text, self.shingle_size).tolist())
        return m.hashvalues.copy()

    def __getstate__(self) -> dict[str, Any]:  # workers rebuild their own cached MinHash lazily
        state = dict(self.__dict__)
        state["_hasher"] = None
        return state

    # -- sequential part: decisions against everything kept so far ---------------------------
    def resolver(self) -> DedupResolver:
        return DedupResolver(self)


class DedupResolver:
    """Stateful batched map deciding keep/drop in input order (must run in one process, in order)."""

    def __init__(self, dedup: Deduplicator):
        self.dedup = dedup
        self.seen: dict[str, str] = {}
        self.lsh = MinHashLSH(threshold=dedup.threshold, num_perm=dedup.num_perm) if dedup.near else None
        self.probe = MinHash(num_perm=dedup.num_perm, seed=dedup.seed, hashfunc=_identity, scheme=SCHEME)
        self.kept_ids: list[str] = []
        self.kept_sigs: list[np.ndarray] = []

    COLUMNS = ("id", *MARK_COLUMNS, "_dedup_hash", "_dedup_sig")

    def __call__(self, *columns: list) -> dict[str, list]:
        rows = unbatch(dict(zip(self.COLUMNS, columns)))
        for row in rows:
            if not is_kept(row):
                continue
            removal = self._decide(row["id"], row["_dedup_hash"], row["_dedup_sig"])
            if removal is not None:
                mark(row, Deduplicator.name, removal)
        return rebatch(rows, list(MARK_COLUMNS))

    def _decide(self, row_id: str, key: str, sig: list[int]) -> Removal | None:
        if self.dedup.exact:
            first = self.seen.get(key)
            if first is not None:
                return Removal("exact_duplicate", {"duplicate_of": first})
            self.seen[key] = row_id
        if self.lsh is None:
            return None
        arr = np.asarray(sig, dtype=np.uint32)
        self.probe.hashvalues = arr
        best, best_j = None, 0.0
        for cand in self.lsh.query(self.probe):
            j = float(np.mean(self.kept_sigs[cand] == arr))
            if j > best_j:
                best, best_j = cand, j
        if best is not None and best_j >= self.dedup.threshold:
            return Removal("near_duplicate", {"duplicate_of": self.kept_ids[best], "jaccard": round(best_j, 4)})
        self.lsh.insert(len(self.kept_ids), self.probe, check_duplication=False)
        self.kept_ids.append(row_id)
        self.kept_sigs.append(arr)
        return None


def normalize(text: str) -> str:
    """Text used for the exact-duplicate key and for shingling: NFKC, case-folded, single-spaced."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def shingle_hashes(normalized_text: str, size: int) -> np.ndarray:
    """32-bit hashes of the word `size`-grams (tokens: words and single punctuation / math symbols).

    Each token is hashed once (xxh32) and a shingle's hash is a polynomial of its tokens' hashes
    (vectorised), which is much cheaper than hashing every joined shingle string. A text with at
    most `size` tokens is a single shingle.
    """
    toks = _TOKEN.findall(normalized_text) or [""]
    th = np.array([xxhash.xxh32_intdigest(t.encode()) for t in toks], dtype=np.uint64)
    width = max(len(toks) - size + 1, 1)
    h = th[:width].copy()
    for k in range(1, min(size, len(toks))):
        h = h * _MIX + th[k:k + width]  # uint64 arithmetic wraps: fine for hashing
    return h & np.uint64(0xFFFFFFFF)

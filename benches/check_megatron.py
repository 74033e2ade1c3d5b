#!/usr/bin/env python3
"""Reads a Megatron-LM indexed dataset written by `phiforge tokenize --megatron PREFIX` with megatron-core's
own reader (megatron.core.datasets.indexed_dataset.IndexedDataset) and checks it against phiforge's token
shards of the same run (docs/token-shards.md): document count, every document's length and tokens, the
token dtype megatron-core picks for the vocabulary.

usage: check_megatron.py PREFIX SHARD_DIR     (prints one JSON line; exit status 1 on any difference)"""
import glob, json, os, sys, warnings

warnings.filterwarnings("ignore")  # megatron-core warns that Transformer Engine and Apex are absent
import numpy as np
import megatron.core
from megatron.core.datasets.indexed_dataset import IndexedDataset


def read_shard(path):
    raw = open(path, "rb").read()
    assert raw[:8] == b"PFTOKSHD", f"{path}: not a phiforge token shard"
    width = int.from_bytes(raw[12:16], "little")
    tokens = int.from_bytes(raw[16:24], "little")
    docs = int.from_bytes(raw[24:32], "little")
    vocab = int.from_bytes(raw[36:40], "little")
    ids = np.frombuffer(raw, dtype="<u2" if width == 2 else "<u4", count=tokens, offset=64)
    index = np.frombuffer(raw, dtype="<u8", count=docs + 1, offset=64 + tokens * width)
    return vocab, [ids[index[k]:index[k + 1]] for k in range(docs)]


def main():
    prefix, shard_dir = sys.argv[1], sys.argv[2]
    docs, vocab = [], None
    for path in sorted(glob.glob(os.path.join(shard_dir, "shard-*.tok"))):
        vocab, d = read_shard(path)
        docs.extend(d)
    if not docs:
        sys.exit(f"no shard-*.tok in {shard_dir}")
    ds = IndexedDataset(prefix)  # mmap'd .idx and .bin, as megatron-core's GPTDataset opens them
    problems = []
    if len(ds) != len(docs):
        problems.append(f"{len(ds)} sequences in the index, {len(docs)} documents in the shards")
    want_dtype = np.uint16 if vocab is not None and vocab < 65500 else np.int32
    if ds.index.dtype != want_dtype:
        problems.append(f"dtype {ds.index.dtype}, megatron's optimal for vocab {vocab} is {want_dtype}")
    lengths = np.asarray(ds.sequence_lengths)
    for k in range(min(len(ds), len(docs))):
        if lengths[k] != len(docs[k]):
            problems.append(f"document {k}: length {lengths[k]} in the index, {len(docs[k])} in the shards")
        elif not np.array_equal(ds[k].astype(np.int64), docs[k].astype(np.int64)):
            problems.append(f"document {k}: tokens differ")
        if len(problems) >= 5:
            break
    print(json.dumps({
        "check": "megatron-core IndexedDataset against phiforge token shards",
        "megatron_core": getattr(megatron.core, "__version__", "?"),
        "prefix": prefix, "sequences": len(ds), "documents_in_shards": len(docs),
        "tokens": int(lengths.sum()), "dtype": str(ds.index.dtype), "vocab": vocab,
        "document_indices": int(len(ds.document_indices)) - 1,
        "passed": not problems, "problems": problems,
    }))
    sys.exit(0 if not problems else 1)


if __name__ == "__main__":
    main()

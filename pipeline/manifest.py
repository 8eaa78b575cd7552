"""`OUT/manifest.json`: what a records directory holds. Written by the Beam job, checked by every reader.

The manifest is a contract checked on read: shard names are plain file names inside the records
folder (never a path that leads elsewhere), each shard's record count (when the manifest has them)
adds up to its split's count, and no shard is listed twice. File access goes through
pipeline.files (tf.io.gfile), so readers do not need Apache Beam.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Sequence

from pipeline import files
from pipeline.errors import DataError
from pipeline.schema import (CHANNEL_ORDER, CHANNELS, LAYOUT_ALIGNED_VALID, MANIFEST_NAME, SCHEMA_VERSION,
                             SPLIT_DIRS)


@dataclass
class SplitInfo:
    shards: list[str]            # file names relative to the records directory
    count: int
    by_label: dict[str, int]     # "female"/"male" -> count
    by_age: dict[str, int]       # folder age as a string -> count
    # Records in each shard, in `shards` order (manifests of older preprocess runs lack it: None).
    shard_counts: list[int] | None = None
    # SHA-256 of each shard file's bytes, in `shards` order: computed by the worker as it writes the
    # shard, checked before the shards are read (pipeline/shard_check.py) and part of the digest a
    # training checkpoint is resumed by. None only before write_manifest fills it in.
    shard_sha256: list[str] | None = None


@dataclass
class Manifest:
    image_size: int
    source_root: str
    splits: dict[str, SplitInfo]
    found: int
    rejected: int
    schema_version: int = SCHEMA_VERSION
    channels: int = CHANNELS
    channel_order: str = CHANNEL_ORDER
    layout: str = LAYOUT_ALIGNED_VALID
    extra: dict = field(default_factory=dict)

    def to_json(self) -> str:
        body = {
            "schema_version": self.schema_version,
            "image_size": self.image_size,
            "channels": self.channels,
            "channel_order": self.channel_order,
            "dtype": "uint8",
            "layout": self.layout,
            "source_root": self.source_root,
            "found": self.found,
            "written": sum(s.count for s in self.splits.values()),
            "rejected": self.rejected,
            "splits": {
                name: {"shards": s.shards, "count": s.count, "by_label": s.by_label, "by_age": s.by_age,
                       **({"shard_counts": s.shard_counts} if s.shard_counts is not None else {}),
                       **({"shard_sha256": s.shard_sha256} if s.shard_sha256 is not None else {})}
                for name, s in self.splits.items()
            },
            **self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"


join = files.join


def write_manifest(records_dir: str, manifest: Manifest) -> None:
    """Write OUT/manifest.json (the Beam job writes its own through Beam; this one serves tests and
    tools). Shard hashes the manifest lacks are computed from the shard files, which must exist."""
    for info in manifest.splits.values():
        if info.shard_sha256 is None:
            info.shard_sha256 = [files.sha256_of(join(records_dir, name)) for name in info.shards]
    files.write_text(join(records_dir, MANIFEST_NAME), manifest.to_json())


def _looks_like_raw_adience(directory: str) -> bool:
    return any(files.exists(join(directory, d)) for d in SPLIT_DIRS.values())


def is_plain_name(name) -> bool:
    """A file name with no folder part: nothing that could point outside the records folder."""
    return (isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")
            and ":" not in name)


def _split_info(path: str, split: str, body: dict) -> SplitInfo:
    """One split of the manifest, its shard list checked (DataError naming the problem)."""
    shards, count = body["shards"], int(body["count"])
    rerun = "rerun `python cli.py preprocess ... --overwrite` to rewrite the records"
    if not isinstance(shards, list):
        raise DataError(f"{path}: split {split}'s shards are not a list; the manifest is damaged: {rerun}")
    for name in shards:
        if not is_plain_name(name):
            raise DataError(f"{path}: split {split} lists shard {name!r}, which is not a plain file name inside "
                            f"the records folder (no folders, no absolute paths); the manifest is damaged or "
                            f"was not written by preprocess: {rerun}")
    counts = body.get("shard_counts")
    if counts is not None:
        if (not isinstance(counts, list) or len(counts) != len(shards)
                or any(not isinstance(n, int) or n < 0 for n in counts) or sum(counts) != count):
            raise DataError(f"{path}: split {split}'s shard_counts {counts!r} do not add up to its count {count} "
                            f"over {len(shards)} shards; the manifest is damaged: {rerun}")
    hashes = body.get("shard_sha256")
    if (not isinstance(hashes, list) or len(hashes) != len(shards)
            or any(not isinstance(h, str) or not _SHA256.fullmatch(h) for h in hashes)):
        raise DataError(f"{path}: split {split} has no sha256 for each of its {len(shards)} shards "
                        f"(`shard_sha256`); the manifest is damaged: {rerun}")
    return SplitInfo(list(shards), count, body["by_label"], body["by_age"], counts, list(hashes))


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_no_shared_shards(path: str, splits: dict[str, SplitInfo]) -> None:
    owner: dict[str, str] = {}
    for split, info in splits.items():
        for name in info.shards:
            if name in owner:
                raise DataError(f"{path} lists shard {name} twice (in {owner[name]} and {split}): its records "
                                f"would be read twice; the manifest is damaged: rerun `python cli.py preprocess "
                                f"... --overwrite`")
            owner[name] = split


def load_manifest(records_dir: str, image_size: int | None = None) -> Manifest:
    """Read and check a records directory's manifest; DataError with what to do when it is unusable."""
    path = join(records_dir, MANIFEST_NAME)
    if not files.exists(records_dir):
        raise DataError(f"records directory {records_dir} does not exist; create it with "
                        f"`python cli.py preprocess -i ADIENCE_ROOT -o {records_dir}`")
    if not files.exists(path):
        if _looks_like_raw_adience(records_dir):
            raise DataError(f"{records_dir} is a raw Adience folder, not preprocessed records; run "
                            f"`python cli.py preprocess -i {records_dir} -o RECORDS` and pass RECORDS instead")
        raise DataError(f"{records_dir} has no {MANIFEST_NAME}: it is not a records directory written by "
                        f"`python cli.py preprocess` (run it, or point -i at its output)")
    try:
        body = json.loads(files.read_text(path))
        version = body["schema_version"]
        if version != SCHEMA_VERSION:
            raise DataError(f"{path} is schema version {version}, this tool reads version {SCHEMA_VERSION}; "
                            f"rerun `python cli.py preprocess ... --overwrite` to rewrite the records")
        manifest = Manifest(
            image_size=int(body["image_size"]),
            source_root=body["source_root"],
            splits={name: _split_info(path, name, s) for name, s in body["splits"].items()},
            found=int(body["found"]),
            rejected=int(body["rejected"]),
            channels=int(body["channels"]),
            channel_order=body["channel_order"],
            layout=body.get("layout", LAYOUT_ALIGNED_VALID),
            extra={k: v for k, v in body.items() if k not in _KNOWN_KEYS},
        )
    except DataError:
        raise
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is corrupt ({type(err).__name__}: {err}); rerun preprocess with --overwrite")
    _check_no_shared_shards(path, manifest.splits)
    if manifest.channel_order != CHANNEL_ORDER or manifest.channels != CHANNELS:
        raise DataError(f"{path} holds {manifest.channels}-channel {manifest.channel_order} images; "
                        f"expected {CHANNELS}-channel {CHANNEL_ORDER}")
    if image_size is not None and manifest.image_size != image_size:
        raise DataError(f"{records_dir} holds {manifest.image_size}x{manifest.image_size} images but "
                        f"{image_size}x{image_size} are needed; rerun preprocess with --image-size {image_size}")
    if sum(s.count for s in manifest.splits.values()) == 0:
        raise DataError(f"{records_dir} holds no records (all {manifest.rejected} inputs were rejected; "
                        f"see its rejects.jsonl)")
    return manifest


_KNOWN_KEYS = {"schema_version", "image_size", "channels", "channel_order", "dtype", "layout",
               "source_root", "found", "written", "rejected", "splits"}


def manifest_digest(records_dir: str, splits: Sequence[str]) -> str:
    """SHA-256 over the given splits' shard names, record counts and content hashes (and, for the
    folds layout, the fold files' hashes): equal digests mean the same records, byte for byte, as
    far as the manifest says; pipeline.shard_check.check_shard_hashes proves the files are those.
    For a training checkpoint's fingerprint, so that resuming on other data is refused. The shard
    files are checked against their hashes first (DataError naming a shard that differs)."""
    manifest = load_manifest(records_dir)
    entries = []
    for split in splits:
        if split not in manifest.splits:
            raise DataError(f"{records_dir} has no split {split!r}; available splits: "
                            f"{', '.join(sorted(manifest.splits))}")
    check_shard_hashes(records_dir, manifest, splits)
    for split in splits:
        info = manifest.splits[split]
        entries.append([split, info.count, info.shards, info.shard_counts, info.shard_sha256, manifest.image_size])
    entries.append(manifest.extra.get(FOLD_FILES_SHA256))
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


# The manifest key of the fold files' hashes (adience-folds layout): name -> sha256.
FOLD_FILES_SHA256 = "fold_files_sha256"


# (path, size, mtime, inode) -> sha256 of the files hashed by this process: a run that checks the
# same shards again (train --folds, once per fold) reads them once.
_HASHED: dict[tuple, str] = {}


def _content_hash(path: str) -> str:
    import os

    if files.is_remote(path):
        return files.sha256_of(path)
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHED:
        _HASHED[key] = files.sha256_of(path)
    return _HASHED[key]


def shard_hash_problem(path: str, expected: str | None) -> str | None:
    """What is wrong with one shard file as the manifest knows it, or None: a symbolic link (it
    could lead out of the records folder), or bytes whose sha256 is not the manifest's."""
    import os

    if not files.is_remote(path) and os.path.islink(path):
        return "is a symbolic link; shards must be files inside the records folder"
    if expected is not None and files.exists(path) and _content_hash(path) != expected:
        return ("does not hold the bytes preprocess wrote (its sha256 differs from the manifest's: the "
                "file was swapped or changed)")
    return None


def check_shard_hashes(records_dir: str, manifest: Manifest, splits: Sequence[str]) -> None:
    """DataError naming the first shard of the splits that is a symbolic link or whose bytes are not
    the ones the manifest's sha256 says (the whole file is read: once per run, before training or
    scoring, so that records swapped behind the same names, counts and sizes are caught)."""
    for split in splits:
        info = manifest.splits[split]
        for name, expected in zip(info.shards, info.shard_sha256 or [None] * len(info.shards)):
            problem = shard_hash_problem(join(records_dir, name), expected)
            if problem:
                raise DataError(f"shard {join(records_dir, name)} {problem}; rerun `python cli.py preprocess -i "
                                f"{manifest.source_root} -o {records_dir} --overwrite`")

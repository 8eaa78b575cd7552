"""`OUT/manifest.json`: what a records directory holds. Written by the Beam job, checked by every reader.

The manifest is a contract checked on read: shard names are plain file names inside the records
folder (never a path that leads elsewhere), each shard's record count (when the manifest has them)
adds up to its split's count, and no shard is listed twice. File access goes through
pipeline.files (tf.io.gfile), so readers do not need Apache Beam.
"""
from __future__ import annotations

import hashlib
import json
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
                       **({"shard_counts": s.shard_counts} if s.shard_counts is not None else {})}
                for name, s in self.splits.items()
            },
            **self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"


join = files.join


def write_manifest(records_dir: str, manifest: Manifest) -> None:
    """Write OUT/manifest.json (the Beam job writes its own through Beam; this one serves tests and tools)."""
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
    return SplitInfo(list(shards), count, body["by_label"], body["by_age"], counts)


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
    """SHA-256 over the given splits' shard names, record counts and file sizes: equal digests mean
    the same records (to the extent a rewrite changes a name, a count or a size). For a training
    checkpoint's fingerprint, so that resuming on other data is refused."""
    manifest = load_manifest(records_dir)
    entries = []
    for split in splits:
        if split not in manifest.splits:
            raise DataError(f"{records_dir} has no split {split!r}; available splits: "
                            f"{', '.join(sorted(manifest.splits))}")
        info = manifest.splits[split]
        sizes = [files.size(join(records_dir, name)) if files.exists(join(records_dir, name)) else None
                 for name in info.shards]
        entries.append([split, info.count, info.shards, info.shard_counts, sizes, manifest.image_size])
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()

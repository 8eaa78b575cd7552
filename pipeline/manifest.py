"""`OUT/manifest.json`: what a records directory holds. Written by the Beam job, checked by every reader."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from apache_beam.io.filesystems import FileSystems

from pipeline.errors import DataError
from pipeline.schema import (CHANNEL_ORDER, CHANNELS, LAYOUT_ALIGNED_VALID, MANIFEST_NAME, SCHEMA_VERSION,
                             SPLIT_DIRS)


@dataclass
class SplitInfo:
    shards: list[str]            # file names relative to the records directory
    count: int
    by_label: dict[str, int]     # "female"/"male" -> count
    by_age: dict[str, int]       # folder age as a string -> count


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
                name: {"shards": s.shards, "count": s.count, "by_label": s.by_label, "by_age": s.by_age}
                for name, s in self.splits.items()
            },
            **self.extra,
        }
        return json.dumps(body, indent=2, sort_keys=False) + "\n"


def join(directory: str, name: str) -> str:
    return FileSystems.join(directory, name)


def write_manifest(records_dir: str, manifest: Manifest) -> None:
    with FileSystems.create(join(records_dir, MANIFEST_NAME)) as f:
        f.write(manifest.to_json().encode("utf-8"))


def _looks_like_raw_adience(directory: str) -> bool:
    return any(FileSystems.exists(join(directory, d)) for d in SPLIT_DIRS.values())


def load_manifest(records_dir: str, image_size: int | None = None) -> Manifest:
    """Read and check a records directory's manifest; DataError with what to do when it is unusable."""
    path = join(records_dir, MANIFEST_NAME)
    if not FileSystems.exists(records_dir):
        raise DataError(f"records directory {records_dir} does not exist; create it with "
                        f"`python cli.py preprocess -i ADIENCE_ROOT -o {records_dir}`")
    if not FileSystems.exists(path):
        if _looks_like_raw_adience(records_dir):
            raise DataError(f"{records_dir} is a raw Adience folder, not preprocessed records; run "
                            f"`python cli.py preprocess -i {records_dir} -o RECORDS` and pass RECORDS instead")
        raise DataError(f"{records_dir} has no {MANIFEST_NAME}: it is not a records directory written by "
                        f"`python cli.py preprocess` (run it, or point -i at its output)")
    try:
        with FileSystems.open(path) as f:
            body = json.loads(f.read().decode("utf-8"))
        version = body["schema_version"]
        if version != SCHEMA_VERSION:
            raise DataError(f"{path} is schema version {version}, this tool reads version {SCHEMA_VERSION}; "
                            f"rerun `python cli.py preprocess ... --overwrite` to rewrite the records")
        manifest = Manifest(
            image_size=int(body["image_size"]),
            source_root=body["source_root"],
            splits={name: SplitInfo(s["shards"], int(s["count"]), s["by_label"], s["by_age"])
                    for name, s in body["splits"].items()},
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

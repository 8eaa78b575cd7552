"""The launcher's check that every input is accounted for (found = written + rejected, per shard
and overall), from the summaries the workers wrote; it builds the manifest."""
from __future__ import annotations

from collections import Counter

from pipeline.errors import DataError
from pipeline.manifest import FOLD_FILES_SHA256, Manifest, SplitInfo
from pipeline.preprocess.discover import Discovery
from pipeline.preprocess.graph import heartbeat_name
from pipeline.schema import LABEL_NAMES, LAYOUT_FOLDS

SHARDING = "zlib.crc32(utf-8 relative path) mod shard count; records sorted by path within a shard"


def reason_kind(reason: str) -> str:
    """A reject's reason without its details ("truncated image: ..." -> "truncated image")."""
    return reason.split(":", 1)[0].split(" (", 1)[0]


def files_per_worker(summaries: dict[str, dict]) -> dict[str, int]:
    """How the shards were spread: worker (host:pid) -> files it handled, most first."""
    per_worker: Counter = Counter()
    for body in summaries.values():
        per_worker[body.get("worker")] += body["assigned"]
    return dict(per_worker.most_common())


def _split_info(split: str, count: int, summaries: dict, rejects: list) -> SplitInfo:
    by_label = {name: 0 for name in LABEL_NAMES}
    by_age: Counter = Counter()
    shards, shard_records, hashes = [], [], []
    for shard in range(count):
        body = summaries.get(heartbeat_name(split, shard))
        if body is None:
            raise DataError(f"internal check failed: shard {shard} of {split} reported nothing; "
                            f"nothing was replaced, rerun the command")
        shards.append(body["file"])
        shard_records.append(int(body["written"]))
        hashes.append(body["sha256"])
        for name, n in body["by_label"].items():
            by_label[name] += n
        by_age.update(body["by_age"])
        rejects.extend((path, reason) for path, reason in body["rejects"])
    return SplitInfo(shards=shards, count=sum(by_label.values()), by_label=by_label,
                     by_age={a: by_age[a] for a in sorted(by_age, key=int)}, shard_counts=shard_records,
                     shard_sha256=hashes)


def reconcile(discovery: Discovery, plan, shard_counts, summaries, image_size) -> tuple[Manifest, list]:
    """Check every input is accounted for (written or rejected) and build the manifest."""
    rejects: list[tuple[str, str]] = list(discovery.skipped)
    splits = {split: _split_info(split, count, summaries, rejects) for split, count in shard_counts.items()}
    for key, items in plan:
        split, shard, _ = key
        body = summaries[heartbeat_name(split, shard)]
        if body["assigned"] != len(items) or body["written"] + len(body["rejects"]) != len(items):
            raise DataError(f"internal check failed: {body['file']} was given {len(items)} files but wrote "
                            f"{body['written']} and rejected {len(body['rejects'])}; nothing was replaced")
    written = sum(s.count for s in splits.values())
    if discovery.found != written + len(rejects):
        raise DataError(f"internal check failed: found {discovery.found} files but wrote {written} and "
                        f"rejected {len(rejects)}; nothing was replaced")
    rejects.sort()
    extra = {"sharding": SHARDING, "skipped_folders": discovery.skipped_folders}
    if discovery.layout == LAYOUT_FOLDS:
        # Images under aligned/ that no fold row names: not part of the protocol (not inputs, so
        # not in found), listed so that nothing is silently ignored.
        # The fold files decide labels and folds: their bytes are part of what the records are.
        extra[FOLD_FILES_SHA256] = discovery.source_sha256
        extra.update(users_per_fold=discovery.users_per_split, subject_exclusive=True,
                     unlisted=len(discovery.unlisted), unlisted_files=discovery.unlisted)
    manifest = Manifest(image_size=image_size, source_root=discovery.root, splits=splits,
                        found=discovery.found, rejected=len(rejects), layout=discovery.layout, extra=extra)
    return manifest, rejects

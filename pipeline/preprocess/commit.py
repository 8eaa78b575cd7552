"""What a run finds in OUT before it starts, and how it swaps its new output in at the end."""
from __future__ import annotations

import json
import re

from apache_beam.io.filesystems import FileSystems

from pipeline.folds import FOLD_SPLITS
from pipeline.manifest import Manifest
from pipeline.preprocess import beam_files
from pipeline.preprocess.beam_files import output_error
from pipeline.schema import MANIFEST_NAME, RECORD_SUFFIX, REJECTS_NAME, SPLIT_DIRS

# Shard files of either layout (so --overwrite replaces a run of the other layout completely).
_SHARD_FILE = re.compile(r"^(" + "|".join((*SPLIT_DIRS, *FOLD_SPLITS)) + r")-\d+-of-\d+"
                         + re.escape(RECORD_SUFFIX) + r"$")
_OUTPUT_NAMES = (MANIFEST_NAME, REJECTS_NAME)


def existing_outputs(out: str) -> list[str]:
    """Files in OUT that a previous run wrote (manifest, rejects, shards), as full paths: OUT is
    listed and the names matched literally (never a glob on the user's path)."""
    # No exists() check first: on object stores (gs://, s3://) a folder is only a prefix and
    # "does not exist" even when it holds files.
    return [FileSystems.join(out, name) for name in beam_files.list_names(out)
            if name in _OUTPUT_NAMES or _SHARD_FILE.match(name)]


def write_launcher_file(out: str, path: str, data: bytes) -> None:
    """A file the launcher writes into the temp folder: an unwritable OUT is one clear error."""
    try:
        beam_files.write_file(path, data)
    except Exception as err:  # noqa: BLE001 - permission denied, read-only file system, disk full, bad bucket...
        raise output_error(out, err) from None


def commit(out: str, tmp: str, old: list[str], manifest: Manifest, rejects) -> list[str]:
    """Swap the new output in. rejects.jsonl and manifest.json are written into the temp folder
    first (a full disk fails here, with nothing replaced); then the old manifest goes first and the
    new one arrives last, so at no moment does OUT hold a manifest next to a mix of old and new
    shards. Renames need no space."""
    text = "".join(json.dumps({"path": p, "reason": r}) + "\n" for p, r in rejects)
    write_launcher_file(out, FileSystems.join(tmp, REJECTS_NAME), text.encode("utf-8"))
    write_launcher_file(out, FileSystems.join(tmp, MANIFEST_NAME), manifest.to_json().encode("utf-8"))
    old_manifest = [p for p in old if p.replace("\\", "/").endswith("/" + MANIFEST_NAME)]
    beam_files.delete_files(old_manifest)
    beam_files.delete_files([p for p in old if p not in old_manifest])
    names = [name for split in manifest.splits.values() for name in split.shards] + [REJECTS_NAME, MANIFEST_NAME]
    beam_files.rename([FileSystems.join(tmp, n) for n in names], [FileSystems.join(out, n) for n in names])
    return old

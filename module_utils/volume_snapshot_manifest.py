# -*- coding: utf-8 -*-
# Snapshots on disk: layout, manifest storage, manifest safety, the check of stored copies.
# Standard library only: this runs on the managed host with its system python3.
"""Where a snapshot's bytes live, how its manifest is written, read, listed and validated."""

from __future__ import annotations

import hashlib
import json
import os
import stat

from ansible.module_utils.volume_snapshot_common import (
    FILES_DIR, FORMAT, ID_RE, IN_USE_PREFIX, LOCK_NAMES, MANIFEST, SIDECAR_SUFFIXES, ManifestError, SnapshotError,
    SnapshotNotFoundError, VerifyError, check_snapshot_id)
from ansible.module_utils.volume_snapshot_copy import _sha256_file, _write_all


def snapshot_dir(backup_root, snapshot_id):
    return os.path.join(backup_root, check_snapshot_id(snapshot_id))


def stored_path(snap_dir, entry):
    """Where an entry's bytes live inside a snapshot; derived from root index + rel, never trusted."""
    base = os.path.join(snap_dir, FILES_DIR, str(int(entry["root"])))
    return base if entry["rel"] == "." else os.path.join(base, entry["rel"])


def load_manifest(snap_dir):
    """Read a manifest and check it against its .sha256 file."""
    path = os.path.join(snap_dir, MANIFEST)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        raise SnapshotNotFoundError("%s: no manifest (%s)" % (snap_dir, exc.strerror))
    try:
        with open(path + ".sha256") as handle:
            expected = handle.read().split()[0]
    except (OSError, IndexError):
        raise ManifestError("%s: the manifest checksum file is missing" % snap_dir)
    if hashlib.sha256(raw).hexdigest() != expected:
        raise ManifestError("%s: the manifest does not match its checksum (damaged or edited)" % snap_dir)
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise ManifestError("%s: the manifest is not valid JSON: %s" % (snap_dir, exc))


def write_manifest(snap_dir, manifest):
    raw = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
    path = os.path.join(snap_dir, MANIFEST)
    for name, data in ((path, raw), (path + ".sha256", ("%s  %s\n" % (hashlib.sha256(raw).hexdigest(),
                                                                     MANIFEST)).encode())):
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def list_snapshots(backup_root):
    """Complete snapshots under backup_root, oldest first: [(created_ns, id, dir)]."""
    found = []
    if not os.path.isdir(backup_root):
        return found
    for name in os.listdir(backup_root):
        path = os.path.join(backup_root, name)
        if not ID_RE.match(name) or not os.path.isfile(os.path.join(path, MANIFEST)):
            continue
        try:
            manifest = load_manifest(path)
        except SnapshotError:
            continue
        found.append((int(manifest.get("created_ns", 0)), name, path))
    return sorted(found)


def find_snapshot(backup_root, snapshot):
    """Directory of a named snapshot, or of the newest one for `latest`."""
    if snapshot in (None, "", "latest"):
        found = list_snapshots(backup_root)
        if not found:
            raise SnapshotNotFoundError("no complete snapshot under %s" % backup_root)
        return found[-1][2]
    path = snapshot_dir(backup_root, snapshot)
    if not os.path.isfile(os.path.join(path, MANIFEST)):
        raise SnapshotNotFoundError("no complete snapshot %s under %s" % (snapshot, backup_root))
    return path


def _is_locked(snap_dir):
    try:
        names = os.listdir(snap_dir)
    except OSError:
        return False
    return any(name in LOCK_NAMES or name.startswith(IN_USE_PREFIX) for name in names)


def verify_stored(snap_dir, entries, rehash):
    """Check the stored copy of every file: regular, 0600, manifest size; with rehash, its sha256 too."""
    problems = []
    for entry in entries:
        path = stored_path(snap_dir, entry)
        if entry["type"] == "dir":
            if not os.path.isdir(path) or os.path.islink(path):
                problems.append("%s: directory missing from the snapshot" % entry["path"])
            continue
        if entry["type"] != "file":
            continue
        try:
            st = os.lstat(path)
        except OSError:
            problems.append("%s: missing from the snapshot" % entry["path"])
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"] or stat.S_IMODE(st.st_mode) != 0o600:
            problems.append("%s: stored copy has the wrong type, size or mode" % entry["path"])
        elif not entry.get("sha256") and not entry.get("changed_during_copy"):
            problems.append("%s: no checksum recorded" % entry["path"])
        elif rehash and entry.get("sha256") and _sha256_file(path) != entry["sha256"]:
            problems.append("%s: stored copy does not match its sha256" % entry["path"])
    if problems:
        raise VerifyError("%d snapshot entries fail verification, first: %s" % (len(problems), problems[0]))


def validate_manifest(manifest, snap_dir, allowed_roots=None):
    """Refuse a manifest that would write anywhere but inside its snapshotted paths.

    Every root must be absolute and normalised (and among allowed_roots when given); every rel must be
    a plain relative path without '..', '.', or empty parts; an entry's path must equal root + rel;
    every entry's parent must be a directory entry of the same root, so no entry can be written
    through a symlink the manifest itself creates; a file root may only hold the file and its
    sidecars. Nothing is written before this passes.
    """
    if manifest.get("format") != FORMAT:
        raise ManifestError("manifest format %r is not supported" % manifest.get("format"))
    roots = manifest.get("roots")
    if not isinstance(roots, list) or not roots:
        raise ManifestError("the manifest has no roots")
    for root in roots:
        path = root.get("path")
        if not isinstance(path, str) or not os.path.isabs(path) or os.path.normpath(path) != path or \
                "\x00" in path or root.get("kind") not in ("dir", "file") or path == "/":
            raise ManifestError("manifest root %r is not a normalised absolute path" % (path,))
        if allowed_roots is not None and path not in allowed_roots:
            raise ManifestError("manifest root %s is not among O(paths)/O(volumes)" % path)
    seen, dirs = set(), set()
    for entry in manifest.get("entries", []):
        index, rel, kind = entry.get("root"), entry.get("rel"), entry.get("type")
        if not isinstance(index, int) or not 0 <= index < len(roots) or not isinstance(rel, str):
            raise ManifestError("manifest entry %r has a bad root or rel" % (entry.get("path"),))
        root = roots[index]
        if kind not in ("file", "dir", "symlink"):
            raise ManifestError("manifest entry %r has an unknown type" % (entry.get("path"),))
        if root["kind"] == "file":
            base = os.path.basename(root["path"])
            if rel not in [base] + [base + s for s in SIDECAR_SUFFIXES] or kind == "dir":
                raise ManifestError("manifest entry %r escapes the file %s" % (rel, root["path"]))
            expected = os.path.join(os.path.dirname(root["path"]), rel)
        elif rel == ".":
            if kind != "dir":
                raise ManifestError("manifest root entry of %s is not a directory" % root["path"])
            expected = root["path"]
        else:
            parts = rel.split("/")
            if rel.startswith("/") or "\x00" in rel or any(p in ("", ".", "..") for p in parts):
                raise ManifestError("manifest entry %r escapes the snapshotted path %s" % (rel, root["path"]))
            parent = "/".join(parts[:-1]) or "."
            if (index, parent) not in dirs:
                raise ManifestError("manifest entry %r does not sit under a directory entry of %s"
                                    % (rel, root["path"]))
            expected = os.path.join(root["path"], rel)
        if entry.get("path") != expected:
            raise ManifestError("manifest entry %r claims path %r outside %s" % (rel, entry.get("path"),
                                                                                root["path"]))
        if expected in seen:
            raise ManifestError("manifest entry %s appears twice" % expected)
        seen.add(expected)
        if kind == "dir":
            dirs.add((index, rel))
        if kind == "file" and not (isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)):
            raise ManifestError("manifest entry %s has no size or sha256" % expected)
        for key in ("mode", "uid", "gid", "mtime_ns"):
            if not isinstance(entry.get(key), int):
                raise ManifestError("manifest entry %s has no integer %s" % (expected, key))
        stored = os.path.normpath(stored_path(snap_dir, entry))
        if not (stored + os.sep).startswith(os.path.join(snap_dir, FILES_DIR) + os.sep):
            raise ManifestError("manifest entry %s would be read from outside the snapshot" % expected)
    return manifest

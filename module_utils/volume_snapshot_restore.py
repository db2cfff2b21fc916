# -*- coding: utf-8 -*-
# Steps of state=restored: compare the live tree with a manifest, stage, put in place, verify.
# Standard library only: this runs on the managed host with its system python3.
"""The pieces plan_restore() and apply_restore() (volume_snapshot.py) are made of."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat

from ansible.module_utils.volume_snapshot_common import SIDECAR_SUFFIXES, ManifestError, VerifyError
from ansible.module_utils.volume_snapshot_copy import _sha256_file, copy_and_hash
from ansible.module_utils.volume_snapshot_manifest import stored_path
from ansible.module_utils.volume_snapshot_scan import _excluded


def _meta_differs(entry, st):
    if entry["type"] != "symlink" and stat.S_IMODE(st.st_mode) != entry["mode"]:
        return True
    return (st.st_uid, st.st_gid, st.st_mtime_ns) != (entry["uid"], entry["gid"], entry["mtime_ns"])


def _live_action(entry, checksum):
    """What restoring one entry needs: None (equal), 'meta', 'write' or 'replace' (+ write)."""
    try:
        st = os.lstat(entry["path"])
    except FileNotFoundError:
        return "write"
    kind = entry["type"]
    if kind == "dir":
        if not stat.S_ISDIR(st.st_mode):
            return "replace"
        return "meta" if _meta_differs(entry, st) else None
    if kind == "symlink":
        if not stat.S_ISLNK(st.st_mode):
            return "replace"
        if os.readlink(entry["path"]) != entry["target"]:
            return "write"
        return "meta" if _meta_differs(entry, st) else None
    if not stat.S_ISREG(st.st_mode):
        return "replace"
    if st.st_size != entry["size"]:
        return "write"
    quick_equal = not _meta_differs(entry, st)
    if quick_equal and not checksum:
        return None
    if _sha256_file(entry["path"]) != entry["sha256"]:
        return "write"
    return None if quick_equal else "meta"


def _extras(manifest):
    """Live paths inside the snapshotted paths that the snapshot does not hold (not excluded)."""
    known = {entry["path"] for entry in manifest["entries"]}
    dir_paths = {entry["path"] for entry in manifest["entries"] if entry["type"] == "dir"}
    exclude, syntax = manifest.get("exclude") or [], manifest.get("exclude_syntax", "fnmatch")
    extras = []
    for index, root in enumerate(manifest["roots"]):
        if root["kind"] == "file":
            base = os.path.basename(root["path"])
            for name in [base] + [base + s for s in SIDECAR_SUFFIXES]:
                path = os.path.join(os.path.dirname(root["path"]), name)
                if path not in known and os.path.lexists(path):
                    extras.append(path)
            continue
        stack = [root["path"]] if root["path"] in dir_paths else []
        while stack:
            current = stack.pop()
            if os.path.islink(current) or not os.path.isdir(current):
                continue
            for name in sorted(os.listdir(current)):
                path = os.path.join(current, name)
                if _excluded(os.path.relpath(path, root["path"]), exclude, syntax):
                    continue
                if path not in known:
                    extras.append(path)
                elif path in dir_paths:
                    stack.append(path)
    return extras


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _set_meta(entry):
    path, link = entry["path"], entry["type"] == "symlink"
    st = os.lstat(path)
    if (st.st_uid, st.st_gid) != (entry["uid"], entry["gid"]):
        os.lchown(path, entry["uid"], entry["gid"])
    if not link:
        os.chmod(path, entry["mode"])
    atime = entry.get("atime_ns", entry["mtime_ns"])
    os.utime(path, ns=(atime, entry["mtime_ns"]), follow_symlinks=not link)


def _staging_dir(root):
    return root["path"] if root["kind"] == "dir" else os.path.dirname(root["path"])


def _stage(entry, snap_dir, staging, fsync):
    """Copy one snapshot file to the staging dir, hashing as it goes; refuse bytes that do not match."""
    dest = os.path.join(staging, "%d-%s" % (entry["root"], hashlib.sha256(entry["path"].encode()).hexdigest()[:24]))
    size, digest = copy_and_hash(stored_path(snap_dir, entry), dest, fsync)
    if size != entry["size"] or digest != entry["sha256"]:
        raise VerifyError("snapshot copy of %s does not match its manifest sha256; nothing was restored"
                          % entry["path"])
    return dest


def _put_in_place(entry, action, staged):
    path = entry["path"]
    if action == "meta":
        return
    if entry["type"] == "dir":
        if action == "replace":
            _remove(path)
        if not (os.path.isdir(path) and not os.path.islink(path)):
            os.makedirs(path, 0o700) if entry["rel"] == "." else os.mkdir(path, 0o700)
        return
    parent = os.path.dirname(path)
    if os.path.islink(parent) or not os.path.isdir(parent):
        raise ManifestError("%s: parent is not a real directory at restore time" % path)
    if entry["type"] == "symlink":
        _remove(path)
        os.symlink(entry["target"], path)
        return
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    os.replace(staged[path], path)


def verify_live(manifest):
    """After a restore: every entry's type, size, mode, owner, mtime and link target match; no extras."""
    problems = []
    for entry in manifest["entries"]:
        try:
            st = os.lstat(entry["path"])
        except OSError:
            problems.append("%s is missing" % entry["path"])
            continue
        kind = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "symlink": stat.S_ISLNK}[entry["type"]]
        if not kind(st.st_mode) or _meta_differs(entry, st):
            problems.append("%s has the wrong type or metadata" % entry["path"])
        elif entry["type"] == "file" and st.st_size != entry["size"]:
            problems.append("%s has the wrong size" % entry["path"])
        elif entry["type"] == "symlink" and os.readlink(entry["path"]) != entry["target"]:
            problems.append("%s points elsewhere" % entry["path"])
    problems.extend("%s should not exist" % path for path in _extras(manifest))
    if problems:
        raise VerifyError("restore verification failed for %d entries, first: %s" % (len(problems), problems[0]))

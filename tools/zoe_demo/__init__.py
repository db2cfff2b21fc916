"""Builds the pre-consolidation Zoe host used by the demo, the tests and the benchmarks."""

import json
import os
import shutil

from .databases import DEMO_PASSCODES, DEMO_PASSWORDS, FOLD_DATABASES, KEEP_DATABASES, UNKNOWN_DATABASES, DemoDatabases
from .tree import EXEMPT_FILES, REFERENCE_RE, REVIEW_FILES, TOTAL_FILES, TOTAL_REFERENCES, DemoTree, scan_references

__all__ = ["build_demo_host", "record_path", "DEMO_PASSCODES", "DEMO_PASSWORDS", "FOLD_DATABASES", "KEEP_DATABASES",
           "UNKNOWN_DATABASES", "EXEMPT_FILES", "REVIEW_FILES", "REFERENCE_RE", "TOTAL_FILES", "TOTAL_REFERENCES",
           "scan_references"]

DEFAULT_IMAGE = "zoe-consolidate/service:latest"


def record_path(root):
    """Where the generator's record of what it planted lives: beside the tree, not inside it."""
    return os.path.abspath(root).rstrip("/") + ".record.json"


def build_demo_host(root, seed=1, scale=1, project="zoe-demo", port_base=18080, image=DEFAULT_IMAGE, force=False):
    """Create the demo host tree at `root` and return the record of what was planted.

    Refuses to overwrite an existing tree unless `force` (the tree may hold a consolidated host).
    """
    root = os.path.abspath(root)
    if os.path.exists(root) and os.listdir(root):
        if not force:
            raise FileExistsError("%s exists and is not empty (use force to rebuild it)" % root)
        shutil.rmtree(root)
    os.makedirs(root, exist_ok=True)
    record = DemoDatabases(root, seed=seed, scale=scale).build()
    record.update(DemoTree(root, seed, project, image, port_base).build())
    record.update({"root": root, "seed": seed, "scale": scale, "project": project, "port_base": port_base,
                   "image": image,
                   "ports": {"zoe-core": port_base, "zoe-auth": port_base + 1, "zoe-mcp-server": port_base + 2,
                             "mem-agent": port_base + 3, "zoe-ui": port_base + 4}})
    path = record_path(root)
    with open(path, "w") as handle:
        json.dump(record, handle, indent=2, sort_keys=True)
    os.chmod(path, 0o600)
    return record

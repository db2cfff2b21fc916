# -*- coding: utf-8 -*-
"""The verification of a merged result: integrity_check and foreign_key_check of the merged copy, each on its
own connection and thread, beside the conflict samples and the backup into the target.

Standard library only: this runs on the managed host with its own python3.
"""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

from ansible.module_utils.zoe_sqlite import foreign_key_errors, integrity_errors
from ansible.module_utils.sqlite_merge_schema import VerificationError


def _fk_counts(conn):
    counts = {}
    for row in foreign_key_errors(conn):
        counts[(row[0], row[2])] = counts.get((row[0], row[2]), 0) + 1
    return counts


def _check_result_integrity(target, conn):
    errors = integrity_errors(conn)
    if errors:
        raise VerificationError("%s: merged database fails integrity_check: %s" % (target, "; ".join(errors[:3])))


def _check_result_foreign_keys(target, conn, fk_before):
    """foreign_key_check of the merged result; violations the target already had are not ours."""
    after = _fk_counts(conn)
    new = {k: v for k, v in after.items() if v > fk_before.get(k, 0)}
    if new:
        raise VerificationError("%s: merged database fails foreign_key_check: %s" % (
            target, "; ".join("%s -> %s: %d row(s)" % (k[0], k[1], v - fk_before.get(k, 0))
                              for k, v in sorted(new.items()))))


class _Verification:
    """integrity_check and foreign_key_check of the merged copy, each on its own connection and thread.

    Why: the full integrity_check of the merged result is the biggest cost after the inserts, and it only reads
    the finished copy. It runs beside the conflict samples and beside apply_merge's backup into the target, whose
    last step (the one that commits) waits for it: a failed check aborts the backup, and SQLite rolls the target's
    transaction back (its rollback journal restores every page written so far). Nothing is weakened: no result
    is returned and nothing is committed before both checks passed (MergePlan.verified()), and errors come in the
    order of the sequential checks (integrity first).
    """

    def __init__(self, target, path, fk_before):
        self.target, self.path = target, path
        self.lock = threading.Lock()
        self.conns = []
        self.closed = False
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="zoe-merge-verify")
        self.futures = [self.executor.submit(self._run, _check_result_integrity, target),
                        self.executor.submit(self._run, _check_result_foreign_keys, target, fk_before)]

    def _run(self, check, *args):
        with self.lock:
            if self.closed:
                raise VerificationError("%s: verification cancelled" % self.target)
            # used by this thread only; close() may interrupt() it from another thread, which SQLite allows
            conn = sqlite3.connect(self.path, check_same_thread=False)
            self.conns.append(conn)
        try:
            check(args[0], conn, *args[1:])
        except sqlite3.DatabaseError as exc:
            raise VerificationError("%s: merged database fails verification: %s" % (self.target, exc))
        finally:
            with self.lock:
                self.conns.remove(conn)
                conn.close()

    def wait(self):
        """Block until both checks are done; raise the first failure (integrity before foreign keys)."""
        for future in self.futures:
            future.result()

    def close(self):
        """Stop the checks (interrupt a running PRAGMA) and join the threads."""
        with self.lock:
            self.closed = True
            for conn in self.conns:
                conn.interrupt()
        self.executor.shutdown(wait=True)


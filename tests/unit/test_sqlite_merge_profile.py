"""The benchmark's profiler (bench/profile_sqlite_merge.py Profile) times a real merge from outside the module.

The module keeps no timer; the profile wraps the functions the merge calls, where their callers look them up. These
tests fail when a function the profile names moves or is renamed, or when a phase stops being reached.
"""

import os
import sys

from ansible.module_utils import sqlite_merge as sm
from ansible.module_utils import sqlite_merge_engine
from test_sqlite_merge_fixtures import ZOE_OPTIONS, build_zoe

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                "bench"))
import profile_sqlite_merge as prof  # noqa: E402

ZOE_SOURCES = ("auth", "sessions", "developer_tasks", "learning", "self_awareness")


def test_the_profile_times_every_phase_of_a_merge_and_puts_the_functions_back(tmp_path):
    zoe = build_zoe(tmp_path)
    sql_before = sqlite_merge_engine._Engine.sql
    with prof.Profile() as profile:
        with sm.plan_merge(zoe["zoe"], [zoe[n] for n in ZOE_SOURCES], **ZOE_OPTIONS) as plan:
            sm.apply_merge(plan)
            result = plan.result()
    phases = profile.phases()
    assert {phase for _, _, phase in prof.PHASES} <= set(phases["wall"])
    assert {"merge: merge_rows", "merge: merge_source", "merge: probe"} <= set(phases["cpu"])
    assert all(seconds >= 0 for kind in phases.values() for seconds in kind.values())
    assert any(text.startswith("INSERT") for text in profile.statements)
    assert sqlite_merge_engine._Engine.sql is sql_before and sm.backup_into.__name__ == "backup_into"
    assert not any(hasattr(sm.backup_into, attr) for attr in ("__wrapped__",))
    assert result["totals"]["source_rows"] == (result["totals"]["inserted"] + result["totals"]["identical"]
                                               + result["totals"]["conflicts"])

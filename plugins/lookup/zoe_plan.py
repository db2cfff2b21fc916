# -*- coding: utf-8 -*-
# zoe-consolidate: read the plan a dry run wrote, for a run pinned to it (-e zoe_plan=FILE or a directory).

from __future__ import annotations

DOCUMENTATION = r"""
name: zoe_plan
author: zoe-consolidate
version_added: "1.0.0"
short_description: Read a host's pinned plan (a dry run's .plan.json) on the controller
description:
  - Returns one dict per term, C({path, plan}) with the parsed plan, or C({path, error}) with one sentence saying why
    there is none (no such file, no plan of the host in the directory, not JSON). It never fails the task itself;
    the C(zoe_plan_refusals) filter turns the answer into the refusal the play prints.
  - A term naming a directory stands for the host's newest plan in it, C(<host>-<UTC time>.plan.json) as the report
    role writes it (newest by the time in the name); plans of hosts whose name merely starts with the host's are
    not taken.
  - A relative path is relative to the directory C(ansible-playbook) runs in.
options:
  _terms:
    description: The plan file, or a directory of plan files.
    required: true
    type: list
    elements: path
  host:
    description: The host whose newest plan a directory term stands for.
    type: str
    required: true
"""

EXAMPLES = r"""
- name: Read the pinned plan
  ansible.builtin.set_fact:
    preflight_plan_pinned: "{{ lookup('zoe_plan', zoe_plan, host=inventory_hostname) }}"
"""

RETURN = r"""
_raw:
  description: One dict per term.
  type: list
  elements: dict
  contains:
    path:
      description: The plan file read (for a directory, the host's newest plan in it), or the term when there is none.
      type: str
    plan:
      description: The parsed plan, when it could be read.
      type: dict
    error:
      description: Why there is no plan to compare with, when there is none.
      type: str
"""

import json
import os
import re

from ansible.errors import AnsibleLookupError
from ansible.plugins.lookup import LookupBase

PLAN_SUFFIX = ".plan.json"


def newest_plan(directory, host):
    """The path of `host`'s newest <host>-<UTC time>.plan.json in `directory`, or None."""
    pattern = re.compile(r"^%s-(\d{8}T\d{6}Z)%s$" % (re.escape(host), re.escape(PLAN_SUFFIX)))
    found = sorted((m.group(1), name) for name in os.listdir(directory) for m in [pattern.match(name)] if m)
    return os.path.join(directory, found[-1][1]) if found else None


def read_plan(term, host):
    """{path, plan} or {path, error} for one term."""
    path = os.path.abspath(os.path.expanduser(str(term)))
    if os.path.isdir(path):
        found = newest_plan(path, host)
        if found is None:
            return {"path": path, "error": "%s holds no plan of %s (%s-<UTC time>%s)" % (path, host, host, PLAN_SUFFIX)}
        path = found
    if not os.path.isfile(path):
        return {"path": path, "error": "%s: no such plan file" % path}
    try:
        with open(path, encoding="utf-8") as handle:
            plan = json.load(handle)
    except (OSError, UnicodeDecodeError) as exc:
        return {"path": path, "error": "%s cannot be read: %s" % (path, exc)}
    except ValueError as exc:
        return {"path": path, "error": "%s is not a plan file (not JSON: %s)" % (path, exc)}
    return {"path": path, "plan": plan}


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        self.set_options(var_options=variables, direct=kwargs)
        host = self.get_option("host")
        if not host:
            raise AnsibleLookupError("zoe_plan needs host=<inventory_hostname>")
        return [read_plan(term, host) for term in terms]

"""compose_env inside the real play (no Docker: zoe_manage_services=false), on a demo host.

- A compose parse error ends the play with the parser's sentence, not Ansible's "One or more items failed" of the
  looped planning task, and nothing on the host changes.
Run: .venv/bin/pytest -q tests/unit/test_compose_env_play.py
"""

import glob
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration"))
from zoe_host import ZoeHost  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture
def host(tmp_path):
    zoe = ZoeHost(tmp_path, start=False)
    yield zoe
    zoe.destroy()


def test_a_second_yaml_document_ends_the_play_with_the_parsers_message(host):
    compose = os.path.join(host.root, "docker-compose.yml")
    with open(compose, "a") as handle:
        handle.write("---\nservices:\n  extra: {image: x}\n")
    lines = sum(1 for _ in open(compose))
    digest = host.digest()
    result = host.playbook("consolidate.yml", "-e", "zoe_manage_services=false")
    assert result.returncode != 0
    sentence = ("%s holds 2 YAML documents (the second starts at line %d); a compose file is one document, nothing was "
                "written" % (compose, lines - 2))
    final = result.stdout[result.stdout.rindex("fatal: "):]
    assert sentence in " ".join(final.split()), final
    assert "One or more items failed" not in final
    report = json.load(open(sorted(glob.glob(os.path.join(host.reports, "*.json")))[-1]))
    assert sentence in report["outcome"]
    assert host.digest() == digest

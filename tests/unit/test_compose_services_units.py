"""compose_services: the stop's layers and the healthcheck read from `docker inspect` (pure functions).

The stop and the start themselves run against a real engine in tests/integration/test_compose_services.py.
"""

import pytest

from ansible.module_utils.compose_services import healthcheck_of, stop_layers

# The demo's depends_on (tools/zoe_demo/tree.py): the UI and three writers depend on zoe-core, the UI on zoe-auth.
DEMO_DEPENDS = {"zoe-auth": ["zoe-core"], "zoe-mcp-server": ["zoe-core"], "mem-agent": ["zoe-core"],
                "zoe-ui": ["zoe-core", "zoe-auth"]}


@pytest.mark.parametrize("services, depends_on, layers", [
    (["zoe-auth", "mem-agent", "zoe-mcp-server", "zoe-core"], DEMO_DEPENDS,
     [["zoe-auth", "mem-agent", "zoe-mcp-server"], ["zoe-core"]]),
    (["zoe-core", "zoe-auth"], DEMO_DEPENDS, [["zoe-auth"], ["zoe-core"]]),
    (["zoe-core", "zoe-auth", "zoe-ui"], DEMO_DEPENDS, [["zoe-ui"], ["zoe-auth"], ["zoe-core"]]),
    (["a", "b"], {"a": ["c"], "c": ["b"]}, [["a", "b"]]),            # a dependency outside the list does not chain
    (["a", "b"], {"a": ["b"], "b": ["a"]}, [["a"], ["b"]]),          # a cycle: the order given
    (["b", "a"], None, [["b"], ["a"]]),                              # no depends_on: one at a time, in order
    (["a", "a", "b"], {}, [["a", "b"]]),
    (["a", "b"], {"a": {"b": {"condition": "service_healthy"}}}, [["a"], ["b"]]),   # compose's long syntax
    ([], DEMO_DEPENDS, []),
], ids=["demo-writers", "two", "three-deep", "outside-dep", "cycle", "no-depends", "duplicates", "long-syntax",
                          "none"])
def test_stop_layers(services, depends_on, layers):
    assert stop_layers(services, depends_on) == layers


def test_every_service_stops_after_all_that_depend_on_it():
    services = ["zoe-core", "mem-agent", "zoe-ui", "zoe-auth", "zoe-mcp-server"]
    layers = stop_layers(services, DEMO_DEPENDS)
    position = {name: i for i, layer in enumerate(layers) for name in layer}
    assert sorted(position) == sorted(services)
    for name, deps in DEMO_DEPENDS.items():
        for dep in deps:
            assert position[name] < position[dep], (name, dep)


@pytest.mark.parametrize("config, expected", [
    # The real Zoe compose's style (docker-compose.yml of jason-easyazz/zoe-ai-assistant): CMD curl -f, 10 s timeout.
    ({"Healthcheck": {"Test": ["CMD", "curl", "-f", "http://localhost:8002/health"], "Interval": 30 * 10 ** 9,
                      "Timeout": 10 * 10 ** 9, "Retries": 3, "StartPeriod": 40 * 10 ** 9}},
     {"argv": ["curl", "-f", "http://localhost:8002/health"], "timeout": 10.0}),
    ({"Healthcheck": {"Test": ["CMD-SHELL", "curl -fsS http://127.0.0.1:8000/health || exit 1"]}},
     {"argv": ["/bin/sh", "-c", "curl -fsS http://127.0.0.1:8000/health || exit 1"], "timeout": 30.0}),
    ({"Healthcheck": {"Test": ["NONE"]}}, None),
    ({"Healthcheck": {"Test": []}}, None),
    ({}, None),
], ids=["cmd-real-zoe", "cmd-shell-default-timeout", "none", "empty", "absent"])
def test_healthcheck_of(config, expected):
    assert healthcheck_of({"Config": config}) == expected

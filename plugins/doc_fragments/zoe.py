"""Documentation shared by the modules in library/ (controller side: only ansible-doc and linters read it).

A module extends action_common_attributes (the attributes' descriptions) and one of these fragments:
`zoe` when it changes things, `zoe.read_only` when it never does. Ansible merges a fragment's attributes
into the module's key by key, and a key the module sets itself wins (ansible.utils.plugin_docs.add_fragments),
so a module adds its own `details:` and may override a `support:`. Found through doc_fragment_plugins in
ansible.cfg.
"""

_COMMON = r"""
version_added: "1.0.0"
author:
  - zoe-consolidate
attributes:
  check_mode:
    support: full
  platform:
    platforms: posix
"""


class ModuleDocFragment(object):

    DOCUMENTATION = _COMMON + r"""
  diff_mode:
    support: full
  idempotent:
    support: full
"""

    READ_ONLY = _COMMON + r"""
  diff_mode:
    support: none
    details: Nothing is changed, so there is no diff.
  idempotent:
    support: full
    details: Always returns changed=false.
"""

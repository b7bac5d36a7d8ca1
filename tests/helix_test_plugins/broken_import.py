"""A plugin that fails to import."""

import helix_framework_this_module_does_not_exist  # noqa: F401

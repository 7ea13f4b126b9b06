"""Repository-level pytest configuration: the plugin tests drive pytest itself through ``pytester``."""

pytest_plugins = ["pytester"]

"""The stash key of the session state, apart from the hooks so that nodes and outputs can import it.
"""

from __future__ import annotations

import pytest

RUN_KEY = pytest.StashKey[object]()

"""phiserve load test: the locustfile that the chart's ConfigMap ships to the cluster.

The code lives in the ``phiserve_load`` package beside this file (one copy, shared with
``loadtests/locustfile.py``); see ``loadtests/README.md`` for every option.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from phiserve_load import hooks
from phiserve_load.shapes import PhiserveShape
from phiserve_load.users import ClosedLoopUser, OpenLoopUser

__all__ = ["ClosedLoopUser", "OpenLoopUser", "PhiserveShape", "hooks"]

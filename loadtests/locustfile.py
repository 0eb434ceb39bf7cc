"""phiserve load test: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:3000``.

The code lives in ``loadtests/chart/files/phiserve_load`` so that the Helm chart in
``loadtests/chart/`` can ship the very same files to the cluster (Helm reads files only from
inside a chart). ``make loadtest`` and ``make demo`` wrap this; see ``loadtests/README.md``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "chart" / "files"))

from phiserve_load import hooks
from phiserve_load.shapes import PhiserveShape
from phiserve_load.users import ClosedLoopUser, OpenLoopUser

__all__ = ["ClosedLoopUser", "OpenLoopUser", "PhiserveShape", "hooks"]

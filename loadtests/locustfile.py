"""phiserve load test: ``locust -f loadtests/locustfile.py --host http://127.0.0.1:3000``.

The code is the ``phiserve_load`` package (loadtests/phiserve_load, installed by ``make setup``);
the chart in ``loadtests/chart/`` ships this file and that package to the cluster, where the
pods put them on ``PYTHONPATH``. ``make loadtest`` and ``make demo`` wrap this; see
``loadtests/README.md``.
"""

from phiserve_load import hooks
from phiserve_load.cds_user import CdsHooksUser
from phiserve_load.shapes import PhiserveShape
from phiserve_load.users import ClosedLoopUser, OpenLoopUser

__all__ = ["CdsHooksUser", "ClosedLoopUser", "OpenLoopUser", "PhiserveShape", "hooks"]

"""Render (again) the report of a load-test run: ``python loadtests/report.py DIR``.

Useful after copying a cluster run's report directory to a machine with matplotlib.
"""

import sys

from phiserve_load.report import main

if __name__ == "__main__":
    sys.exit(main())

"""The load shape: which users run, how many, and when the run ends.

One :class:`PhiserveShape` serves every ``--load-shape`` (locust uses the single shape class it
finds in a locustfile):

closed  ``-u`` closed-loop users for ``-t`` seconds (default 60)
open    ``--dispatchers`` open-loop dispatchers sharing ``--rate`` for ``-t`` seconds
ramp    ``--ramp-steps`` steps of ``--ramp-step-s`` seconds; ``--ramp-kind rate`` steps the
        open-loop arrival rate (default: latency stays honest while the server saturates),
        ``--ramp-kind users`` steps closed-loop users

Every shape ends by itself: after the planned time the users are stopped (in-flight requests may
finish, up to ``--stop-timeout``), and a moment later the run quits. A master waits one worker
report interval longer so the last samples of every worker arrive before the report is written.
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape
from locust.runners import MasterRunner

from phiserve_load import options as options_mod
from phiserve_load.cds_user import CdsHooksUser
from phiserve_load.users import ClosedLoopUser, OpenLoopUser

# Seconds a master waits after stopping the workers' users: their stats (and samples) are
# reported every 3 s (locust's WORKER_REPORT_INTERVAL).
MASTER_DRAIN_S = 4.0
# Open loop: dispatchers start a little after the shape; give them time to finish the schedule.
OPEN_LOOP_GRACE_S = 1.0


class PhiserveShape(LoadTestShape):
    """Closed, open or ramp, per ``--load-shape``; bounded in time (and ``--max-requests``)."""

    use_common_options = True  # -u, -r and -t mean what they say for the closed loop

    def __init__(self) -> None:
        super().__init__()
        self._stopped_at: float | None = None

    def reset_time(self) -> None:
        """Called by locust when the shape starts."""
        super().reset_time()
        self._stopped_at = None

    def _opts(self) -> options_mod.LoadOptions:
        env = self.runner.environment if self.runner else None
        return options_mod.from_parsed(getattr(env, "parsed_options", None))

    def tick(self) -> tuple[int, float, list[Any]] | tuple[int, float] | None:
        """Users now, or None to end the run."""
        opts = self._opts()
        t = self.get_run_time()
        end = opts.total_s + (OPEN_LOOP_GRACE_S if opts.is_open else 0.0)
        if t < end and self._stopped_at is None:
            return self.load_at(opts, t)
        if self._stopped_at is None:
            self._stopped_at = t
            return 0, 100.0  # stop every user; in-flight requests may finish
        drain = MASTER_DRAIN_S if isinstance(self.runner, MasterRunner) else 0.0
        return None if t - self._stopped_at >= drain else (0, 100.0)

    def stop_now(self) -> None:
        """End the run at the next tick (``--max-requests`` reached)."""
        if self._stopped_at is None:
            self._stopped_at = self.get_run_time()

    @staticmethod
    def load_at(opts: options_mod.LoadOptions, t: float) -> tuple[int, float, list[Any]]:
        """(users, spawn rate, user classes) at ``t`` seconds into the run."""
        if opts.is_open:
            # Dispatchers start together; the rate ramp (if any) is in their schedule.
            return opts.dispatchers, float(opts.dispatchers), [OpenLoopUser]
        closed = CdsHooksUser if opts.cds_service else ClosedLoopUser
        if opts.load_shape == "ramp":
            users = max(1, round(opts.ramp_value(opts.step_of(t))))
            # Reach each step's users within a second so the step measures what it says.
            return users, float(max(users, 1)), [closed]
        return opts.users, opts.spawn_rate, [closed]

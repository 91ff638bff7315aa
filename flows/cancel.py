"""The end of a cancelled batch in Prefect's log: Cancelled is an outcome, not an error.

Prefect's flow engine logs every final state other than Completed at ERROR ("Finished in
state Cancelled(...)"). A batch that was cancelled and stopped cleanly (``flashgen.stopping``)
has nothing wrong to report, and an ERROR line there would page whoever watches the logs;
so once a batch ends Cancelled, this process logs that one line at INFO.
"""

from __future__ import annotations

import logging

# The logger the flow engine writes its "Finished in state ..." line to.
_ENGINE_LOGGER = "prefect.flow_runs"


class _CancelledIsInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and str(record.msg).startswith(
                "Finished in state Cancelled"):
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


_FILTER = _CancelledIsInfo()


def quiet_cancelled_finish() -> None:
    """Log the engine's "Finished in state Cancelled" at INFO from now on (idempotent)."""
    logger = logging.getLogger(_ENGINE_LOGGER)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)

"""Library output a user cannot act on, kept off the terminal (``RLHF_PERSONA_VERBOSE=1`` shows
it all again).

- deprecation warnings raised inside transformers / TRL / PEFT / datasets / accelerate / torch
  about their own internals (our own calls use the current names);
- transformers' "LOAD REPORT" where it reports what is expected (a reward backbone's new
  scoring head, "missing" on every load; a policy's report stays: there it would matter) and
  its "Loading weights" bar on every model load.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

LIBRARIES = r"(transformers|trl|peft|datasets|accelerate|torch)(\..*)?$"


def verbose() -> bool:
    return os.environ.get("RLHF_PERSONA_VERBOSE", "") not in ("", "0")


def quiet_libraries() -> None:
    """Once per process, at the CLI's start: no import of the libraries themselves (fast)."""
    if verbose():
        return
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=LIBRARIES)


def quiet_loading() -> None:
    """No "Loading weights" bar per model load (call where transformers is imported anyway)."""
    if verbose():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _not_a_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def expected_load_report():
    """Inside: no LOAD REPORT from ``from_pretrained`` (for loads whose missing keys are by
    design, e.g. a sequence-classification head on an encoder checkpoint). A filter, not a
    level: transformers runs extra checks (and warns) when that logger's level is raised."""
    logger = logging.getLogger("transformers.modeling_utils")
    if not verbose():
        logger.addFilter(_not_a_load_report)
    try:
        yield
    finally:
        logger.removeFilter(_not_a_load_report)

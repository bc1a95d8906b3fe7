"""The one way the gateway answers an error: the OpenAI envelope with the contract's code.

Route code raises ``LatticeError``; the app's exception handler (``app.py``) answers it
with ``error_response``, as it does framework errors and the last-resort 500.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from starlette.responses import JSONResponse

from lattice_protocol import LatticeError


def error_response(error: LatticeError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The envelope with the code's status; ``x-should-retry: false`` where a retry cannot
    succeed, ``retry-after`` when the error says how long to wait."""
    all_headers = {"x-should-retry": "true" if error.code.retryable else "false"}
    if error.retry_after is not None:
        all_headers["retry-after"] = str(math.ceil(error.retry_after))
    if headers:
        all_headers.update(headers)
    return JSONResponse(error.body(), status_code=error.code.status, headers=all_headers)

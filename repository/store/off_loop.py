"""CPU work of the async face kept off the event loop: validating and laying out customers
happens once, before the transaction, and in a worker thread when there is much of it.

A thread still shares the interpreter with the loop, but the interpreter switches between
them every few milliseconds (``sys.getswitchinterval``), so the loop goes on answering
while a large batch is validated, instead of waiting for all of it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

__all__ = ["INLINE_BATCH", "INLINE_BODY_BYTES", "off_loop"]

P = ParamSpec("P")
T = TypeVar("T")

#: Customers of a batch validated on the loop itself: a few are done sooner than a thread
#: is handed them (about 0.2 ms each; a thread costs about as much to start and join).
INLINE_BATCH = 8
#: Bytes of a webhook body validated on the loop itself: Voucherify's are a few kilobytes
#: (well under a millisecond), a larger one goes to a thread.
INLINE_BODY_BYTES = 16 * 1024


async def off_loop(heavy: bool, work: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``work(*args, **kwargs)``: in a worker thread if ``heavy``, else right here (the
    loop's thread, with no await in between)."""
    if heavy:
        return await asyncio.to_thread(work, *args, **kwargs)
    return work(*args, **kwargs)

"""The reason a protocol refusal gives, for tests that expect one."""

from __future__ import annotations

import pytest

from ftlct.protocol.errors import ProtocolError


def reason_of(call, *args, **kwargs) -> str:
    """The reason of the ``ProtocolError`` that ``call(*args, **kwargs)`` must raise."""
    with pytest.raises(ProtocolError) as info:
        call(*args, **kwargs)
    return info.value.reason

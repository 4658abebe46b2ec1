"""msgspec job serializer for arq.

arq's default is pickle, so anyone able to write to Redis could run code inside the workers.
Job arguments here are plain strings and numbers, which msgpack carries without that risk.
"""

from __future__ import annotations

from typing import Any

import msgspec

# An arq result may hold an exception object; msgpack cannot carry one, so it travels as text.
_encoder = msgspec.msgpack.Encoder(enc_hook=repr)
_decoder = msgspec.msgpack.Decoder()


def job_serializer(obj: dict[str, Any]) -> bytes:
    return _encoder.encode(obj)


def job_deserializer(raw: bytes) -> dict[str, Any]:
    return _decoder.decode(raw)

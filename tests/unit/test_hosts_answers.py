"""The controller reads a host's answer (captured frames, keys) without letting it run code."""

from __future__ import annotations

import base64
import os
import pickle

import pytest

from tunlab.errors import TunlabError
from tunlab.lab.multihost import _pack, _unpack
from tunlab.traffic.decap import Frame


def test_frames_and_keys_come_back_as_they_left() -> None:
    frames = {"link_a-b": [Frame(1.5, b"\x45" + bytes(27), True), Frame(2.0, b"\x60" + bytes(47))]}
    assert _unpack(_pack(frames)) == frames
    keys = {7: os.urandom(32)}
    assert _unpack(_pack(keys)) == keys


class Evil:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("echo pwned",))


@pytest.mark.parametrize("obj", [Evil(), {"frames": [Evil()]}, TunlabError("not data")])
def test_an_answer_with_any_other_object_is_refused_in_one_line(obj: object) -> None:
    with pytest.raises(TunlabError) as e:
        _unpack(base64.b64encode(pickle.dumps(obj)).decode())
    assert "which a host never sends" in e.value.message and "\n" not in str(e.value)


def test_a_garbled_answer_is_one_line() -> None:
    with pytest.raises(TunlabError, match="could not be read"):
        _unpack(base64.b64encode(b"\x80\x04garbage").decode())

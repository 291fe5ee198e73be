"""Message types for rosbag2 files: a rosbags typestore that also knows every installed interface.

rosbags ships the standard ROS 2 types; custom ones (ours, or any package installed in this
environment) are registered from their ``share/<pkg>/msg/<Name>.msg`` definitions, found under the
ament prefixes, together with their dependencies. Also maps type names to importable rclpy classes.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path
from typing import Any

from rosbags.typesys import get_types_from_msg
from rosbags.typesys.store import Typestore


class BagTypeError(LookupError):
    """A message type whose definition cannot be found."""


def _prefixes() -> list[Path]:
    env = os.environ.get("AMENT_PREFIX_PATH", "")
    out = [Path(p) for p in env.split(os.pathsep) if p]
    out.append(Path(sys.prefix))
    return out


def find_msg_definition(msgtype: str) -> str:
    """The ``.msg`` text of ``pkg/msg/Name`` from the installed ament prefixes."""
    pkg, _, name = msgtype.split("/")
    for prefix in _prefixes():
        path = prefix / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    raise BagTypeError(f"no definition of {msgtype} under {[str(p) for p in _prefixes()]}")


def register_type(store: Typestore, msgtype: str) -> None:
    """Register ``msgtype`` (and the custom types it uses) in ``store`` if it is missing."""
    pending = [msgtype]
    while pending:
        name = pending.pop()
        if name in store.fielddefs:
            continue
        text = find_msg_definition(name)
        types = get_types_from_msg(text, name)
        store.register(types)
        pkg = name.split("/")[0]
        for ref in re.findall(r"^\s*([A-Za-z_][\w/]*)(?:\[[^\]]*\])?\s+\w+", text, re.MULTILINE):
            if ref[0].isupper():
                ref = f"{pkg}/msg/{ref}"
            elif "/" in ref:
                ref = ref if ref.count("/") == 2 else ref.replace("/", "/msg/", 1)
            else:
                continue
            if ref not in store.fielddefs:
                pending.append(ref)


def default_typestore() -> Typestore:
    """Jazzy's standard types plus ba_perception_msgs: the data package's typestore, shared."""
    from ba_perception.data.bag import typestore

    return typestore()


def import_message_class(msgtype: str) -> Any:
    """The rclpy message class of ``pkg/msg/Name``; raises :class:`BagTypeError` if not importable."""
    parts = msgtype.split("/")
    if len(parts) != 3:
        raise BagTypeError(f"malformed message type {msgtype!r} (expected pkg/msg/Name)")
    pkg, kind, name = parts
    try:
        return getattr(importlib.import_module(f"{pkg}.{kind}"), name)
    except (ImportError, AttributeError) as err:
        raise BagTypeError(f"message type {msgtype} is not installed here ({err})") from err

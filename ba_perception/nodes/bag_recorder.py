"""bag_recorder: record chosen topics to a rosbag2 MCAP file (via rosbags), byte-identical.

Subscribes in raw mode and writes the serialized CDR as received, with the message definitions
embedded, so the file reads back in any rosbag2 tool. Types come from the ``types`` parameter or
from graph discovery (waiting up to ``discovery_timeout_s`` for each topic to appear).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from rosbags.rosbag2 import StoragePlugin, Writer

from ba_perception.ros.bag_types import BagTypeError, default_typestore, import_message_class, register_type
from ba_perception.ros.node import PerceptionNode, StartupError, run_node
from ba_perception.ros.params import ParamSpec, qos_profile


class BagRecorder(PerceptionNode):
    """Writes every message of ``topics`` to ``output``; see the module docstring."""

    PARAMS = (
        ParamSpec("output", "", "rosbag2 folder to create (must not exist)"),
        ParamSpec("topics", [""], "topics to record"),
        ParamSpec("types", [""], "message types of `topics` in the same order (pkg/msg/Name); empty = discover"),
        ParamSpec("storage", "mcap", "storage plugin", choices=("mcap", "sqlite3")),
        ParamSpec("qos", "reliable", "subscription QoS; reliable_history also takes the messages publishers kept "
                  "from before the match (needs transient-local publishers, as ba_perception's outputs are)",
                  choices=("reliable", "reliable_history", "sensor_data", "best_effort")),
        ParamSpec("qos_depth", 100, "subscription queue depth", min=1),
        ParamSpec("discovery_timeout_s", 10.0, "how long to wait for a topic's type to be discovered", min=0.0),
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("bag_recorder", **kwargs)
        topics = [t for t in self.p["topics"] if t]
        types = [t for t in self.p["types"] if t]
        if not self.p["output"] or not topics:
            raise StartupError("set 'output' (a new folder) and 'topics' (at least one)")
        if types and len(types) != len(topics):
            raise StartupError(f"'types' has {len(types)} entries for {len(topics)} topics")
        out = Path(self.p["output"])
        if out.exists():
            raise StartupError(f"output {str(out)!r} exists; choose a new folder")
        if not out.parent.is_dir():
            raise StartupError(f"output folder's parent {str(out.parent)!r} does not exist")
        self.typestore = default_typestore()
        storage = StoragePlugin.MCAP if self.p["storage"] == "mcap" else StoragePlugin.SQLITE3
        self.writer = Writer(out, version=9, storage_plugin=storage)
        self.writer.open()
        self._lock = threading.Lock()
        self._closed = False
        self.connections: dict[str, Any] = {}
        self._pending = dict(zip(topics, types)) if types else {t: "" for t in topics}
        self._deadline = time.monotonic() + self.p["discovery_timeout_s"]
        self._subscribe_ready()
        if self._pending:
            self._timer = self.create_timer(0.05, self._subscribe_ready)

    def _subscribe_ready(self) -> None:
        if not self._pending:
            return
        discovered = dict(self.get_topic_names_and_types())
        for topic, msgtype in list(self._pending.items()):
            if not msgtype:
                names = discovered.get(topic, [])
                if not names:
                    if time.monotonic() > self._deadline:
                        self.get_logger().warning(f"{topic}: no publisher discovered; not recorded")
                        self.count("topics_not_found")
                        del self._pending[topic]
                    continue
                msgtype = names[0]
            del self._pending[topic]
            try:
                cls = import_message_class(msgtype)
                register_type(self.typestore, msgtype)
            except BagTypeError as err:
                self.get_logger().warning(f"{topic}: {err}; not recorded")
                self.count("topics_skipped")
                continue
            with self._lock:
                self.connections[topic] = self.writer.add_connection(topic, msgtype, typestore=self.typestore)
            self.create_subscription(
                cls, topic, lambda raw, t=topic: self._write(t, raw),
                qos_profile(self.p["qos"], self.p["qos_depth"]), raw=True)
            self.get_logger().info(f"recording {topic} [{msgtype}]")

    def _write(self, topic: str, raw: bytes) -> None:
        with self._lock:
            if self._closed:
                return
            self.writer.write(self.connections[topic], self.get_clock().now().nanoseconds, raw)
        self.count("recorded")

    def close(self) -> None:
        """Finish the bag (idempotent)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self.writer.close()


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    return run_node(BagRecorder, argv)


if __name__ == "__main__":
    raise SystemExit(main())

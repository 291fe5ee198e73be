"""`ba-perception bench transport`: camera images between two processes over DDS.

A publisher process sends ``width x height`` rgb8 images at ``rate`` Hz (reliable QoS, stamped
with the wall clock right before ``publish``); a subscriber process (a normal, deserializing
subscription, as a node would have) records the wall-clock arrival of each. Runs once with the
shipped Fast DDS profile (shared memory) and once with Fast DDS's default transports as the
reference, in the same run. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from ba_perception.eval.results import machine_info
from ba_perception.graph import fastdds_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options of ``ba-perception bench transport``."""
    parser.add_argument("--rate", type=float, default=30.0, help="publish rate, Hz")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each run")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--skip-reference", action="store_true", help="only run with the shipped profile")
    parser.add_argument("--out", default="out/bench/transport.json", help="JSON output path")
    parser.add_argument("--role", choices=("pub", "sub"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)


def _run_pair(args: argparse.Namespace, profile: Path | None, tmp: Path, tag: str) -> dict:
    env = dict(os.environ)
    env.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    env["ROS_DOMAIN_ID"] = str(150 + os.getpid() % 50)
    for k in ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE"):
        env.pop(k, None)
        if profile is not None:
            env[k] = str(profile)
    count = int(args.rate * args.seconds)
    base = [sys.executable, "-m", "ba_perception.bench.transport", "--rate", str(args.rate), "--width",
            str(args.width), "--height", str(args.height), "--count", str(count)]
    sub_res, pub_res = tmp / f"{tag}-sub.json", tmp / f"{tag}-pub.json"
    sub = subprocess.Popen(base + ["--role", "sub", "--result", str(sub_res)], env=env)
    pub = subprocess.Popen(base + ["--role", "pub", "--result", str(pub_res)], env=env)
    pub.wait(timeout=args.seconds + 60)
    Path(str(sub_res) + ".done").touch()
    sub.wait(timeout=60)
    lat = json.loads(sub_res.read_text())["latency_ms"]
    failures = json.loads(pub_res.read_text())["failures"]
    a = np.array(list(lat.values()), dtype=np.float64)
    return {
        "transport": tag, "sent": count, "delivered": int(a.size), "publish_failures": failures,
        "p50_ms": float(np.percentile(a, 50)) if a.size else None,
        "p99_ms": float(np.percentile(a, 99)) if a.size else None,
        "max_ms": float(a.max()) if a.size else None,
    }


def run(args: argparse.Namespace) -> int:
    """Run ``bench transport`` (or, with ``--role``, one of its publisher / subscriber processes)."""
    if args.role == "pub":
        from ba_perception.ros.probe import image_publisher

        image_publisher(args)
        return 0
    if args.role == "sub":
        from ba_perception.ros.probe import image_subscriber

        image_subscriber(args)
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as d:
        rows.append(_run_pair(args, fastdds_profile(), Path(d), "shipped profile (SHM 16 MiB)"))
        if not args.skip_reference:
            rows.append(_run_pair(args, None, Path(d), "Fast DDS defaults (reference)"))
    print(f"\n{args.width}x{args.height} rgb8 at {args.rate:g} Hz for {args.seconds:g} s, reliable QoS, "
          f"publisher and subscriber in separate processes\n")
    print(f"{'transport':32s} {'delivered':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")

    def p(v):
        return f"{v:8.2f}" if v is not None else "     n/a"

    for r in rows:
        print(f"{r['transport']:32s} {r['delivered']:5d}/{r['sent']:<6d} {p(r['p50_ms'])} {p(r['p99_ms'])} {p(r['max_ms'])}")
    if len(rows) == 2 and rows[0]["p99_ms"] and rows[1]["p99_ms"]:
        print(f"\np99 ratio shipped/reference: {rows[0]['p99_ms'] / rows[1]['p99_ms']:.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"host": machine_info(), "config": vars(args) | {"role": None},
                               "results": rows}, indent=2, default=str))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    add_arguments(p)
    sys.exit(run(p.parse_args()))

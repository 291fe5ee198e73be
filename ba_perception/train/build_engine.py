"""`ba-perception build-engine`: build and cache the TensorRT engine of an exported detector ahead of time."""

from __future__ import annotations

import argparse

from ba_perception.core.detection.backends import DEFAULT_ENGINE_CACHE, BackendError, build_engine


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI options."""
    parser.add_argument("--onnx", default="models/detector.onnx", help="exported detector")
    parser.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    parser.add_argument("--workspace-mb", type=int, default=1024, help="builder workspace limit, MiB")
    parser.add_argument("--cache-dir", default=str(DEFAULT_ENGINE_CACHE), help="engine + timing cache folder")
    parser.add_argument("--force", action="store_true", help="rebuild even if a valid cached engine exists")


def run(args: argparse.Namespace) -> int:
    """Build (or validate the cached) engine and print its path."""
    from ba_perception.cli import CommandError

    try:
        path = build_engine(args.onnx, args.precision, args.workspace_mb, args.cache_dir, args.force)
    except BackendError as err:
        raise CommandError(str(err)) from err
    print(f"engine: {path}")
    return 0

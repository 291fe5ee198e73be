"""Benchmarks run by `ba-perception bench NAME`: each prints a table and writes JSON under out/bench/."""

"""Benchmarks (`make bench`): each module measures one capability and writes docs/bench-<name>.md."""

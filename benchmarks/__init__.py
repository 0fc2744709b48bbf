"""The `make bench-*` targets (`python -m benchmarks.<name>`) and the machine description they print.

Scripts, not library: they may import any package of the service, and nothing imports them but tests.
"""

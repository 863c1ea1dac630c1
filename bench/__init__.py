"""The benchmark: how close the router runs to the Kafka pipe it sits on (run bench/router_vs_pipe.py)."""

"""``make bench``: the suite's speed, side by side with raw Redis and raw gRPC."""

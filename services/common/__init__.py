"""Code every service needs: settings, logging, the gRPC server host and Redis helpers.

Nothing here knows about a particular service; services talk to each other over gRPC only.
"""

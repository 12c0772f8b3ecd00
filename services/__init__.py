"""The services of the suite, one package each, plus the code they share.

- ``gateway``: the HTTP endpoint mParticle posts to; translates Firehose JSON to gRPC calls.
- ``keys``: API keys (create, validate, revoke, list).
- ``audience``: audience subscriptions and memberships, in Redis.
- ``segment``: connectors and the segment builder's list.
- ``common``: settings, logging, gRPC server plumbing and Redis helpers used by all of them.

``python -m services`` runs the whole suite locally (``make run``); ``python -m services.<name>``
runs one service.
"""

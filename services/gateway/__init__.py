"""The gateway: the HTTP endpoint mParticle posts Firehose JSON to, in front of the gRPC
services."""

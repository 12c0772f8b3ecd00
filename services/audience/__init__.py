"""The audience service: subscriptions and memberships, and the lookups built on them."""

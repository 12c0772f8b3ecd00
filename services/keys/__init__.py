"""The keys service: API keys that tie mParticle's requests to an account and a connector."""

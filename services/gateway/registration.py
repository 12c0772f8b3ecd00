"""What the gateway tells mParticle about itself (module_registration_response)."""

from typing import Any

from services.gateway.settings import GatewaySettings

# The Firehose SDK version whose message model this gateway follows (PROTOCOL.md, sources).
FIREHOSE_VERSION = "3.2.0"

DESCRIPTION = (
    "Stream mParticle audiences in real time and target them in A/B tests and "
    "personalizations, by mParticle ID."
)


def registration_body(settings: GatewaySettings) -> dict[str, Any]:
    """The registration-specific fields; the envelope is added by the caller."""
    return {
        "sdk_version": FIREHOSE_VERSION,
        "name": settings.integration_name,
        "description": DESCRIPTION,
        "version": settings.integration_version,
        # Memberships are keyed by MPID, which mParticle only forwards with this permission.
        "permissions": {"allow_access_mpid": True},
        "audience_processing_registration": {
            "account_settings": [
                {
                    "type": "text",
                    "id": settings.api_key_setting,
                    "name": "API Key",
                    "description": "The API key generated for this connector.",
                    "visible": True,
                    "required": True,
                    "confidential": True,
                }
            ]
        },
    }

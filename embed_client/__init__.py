"""Python client for embed-cluster's HTTP API."""

from embed_client.client import (
    HTTP_ERROR,
    NETWORK_ERROR,
    PARSE_ERROR,
    TIMEOUT,
    EmbedClient,
    EmbedError,
)

__all__ = ["HTTP_ERROR", "NETWORK_ERROR", "PARSE_ERROR", "TIMEOUT", "EmbedClient", "EmbedError"]

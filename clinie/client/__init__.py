"""Python client of the clinie service (the contract's "Python client"): `Client`, `AsyncClient`,
`ClinieError`. It needs httpx for HTTP and grpcio + protobuf for gRPC, not Ray or any model
library (`pip install 'clinie[client]'`)."""

from clinie.client.client import AsyncClient, Client
from clinie.client.config import ClientConfig
from clinie.client.errors import ClinieError

__all__ = ["AsyncClient", "Client", "ClientConfig", "ClinieError"]

"""Trust at the edge: TLS credentials, caller identity from the client certificate, limits, and the
development PKI. Nothing here knows about settlements."""

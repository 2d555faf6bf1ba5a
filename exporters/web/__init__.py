"""The HTTP endpoint: TLS, basic auth and the web configuration file."""

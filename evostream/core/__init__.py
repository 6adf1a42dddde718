"""The thin core under every service: settings, errors, clock, the Kafka clients (``bus``), the local-stack launcher
(``stack``) and the content-addressed artifact store."""

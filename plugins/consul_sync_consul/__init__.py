"""The built-in Consul plugin: the ``consul`` source (a live agent) and the
``file`` source (Consul service-definition files, no agent needed)."""

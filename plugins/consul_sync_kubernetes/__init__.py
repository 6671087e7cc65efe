"""The built-in Kubernetes plugin: the ``manifests`` sink (YAML, no cluster
needed) and the live ``kubernetes`` sink, sharing one pure renderer."""

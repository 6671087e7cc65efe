"""The built-in Consul plugin: the ``consul`` source (a live agent) and the
``file`` source (Consul service-definition files, no agent needed).

Where things live (docs/consul-source.md has the why):

* ``plugin`` registers both sources; ``checks`` checks a ``consul`` source's settings.
* ``source`` -- ``ConsulSource``: wires the parts below and fans a catalog answer out
  to them; ``config`` -- its settings and what they mean for the requests.
* ``watch`` -- the blocking watches (catalog, health state, nodes) and Consul's index
  rules; ``reader`` -- the reader pool (rechecks, retries); ``explain`` -- in-place
  changes (the instance scan, ``moved_names``); ``status`` -- failures and completeness;
  ``publish`` -- when a snapshot goes to the runtime.
* ``state`` -- what is known, as desired services (pure); ``parse`` -- Consul's answers
  as plain values (pure); ``convert`` -- instances -> a desired service, shared with
  ``file``.
* ``api`` -- the HTTP API client; ``transport`` / ``h11_transport`` -- the bytes (httpx
  when injected, h11 over anyio otherwise); ``tokens`` -- the ACL token; ``errors``.
"""

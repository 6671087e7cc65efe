"""Kubernetes plumbing shared by the ``kubernetes`` and ``gateway`` plugins.

A library, not a plugin: no entry point, no hooks, and it imports neither plugin (the plugins
may not import each other; both import this).  Modules:

* :mod:`.client` -- :class:`~.client.KubeClient`, the synchronous API wrapper (plain dicts);
  the only module that imports ``kubernetes``.
* :mod:`.watch` -- one watch request's stream of events.
* :mod:`.connect` -- the kubeconfig check, and making a client when a sink first needs one.
* :mod:`.resources` -- :class:`~.resources.Resource`, the kinds the sinks touch.
* :mod:`.errors` -- :class:`~.errors.KubeError`, outage logging, the RBAC hint of a 403.
* :mod:`.informer` -- list + watch of one kind in one namespace, kept in a store.
* :mod:`.objects` -- our labels and annotations; whose an object is (:class:`~.objects.Ownership`).
* :mod:`.names` -- DNS-1035 names for services.
* :mod:`.events` -- rate-limited Warning Events; :mod:`.gather` -- concurrent calls;
  :mod:`.metrics` -- metrics made once per registry.
"""

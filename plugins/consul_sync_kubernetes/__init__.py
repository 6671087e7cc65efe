"""The built-in Kubernetes plugin: the ``manifests`` sink (YAML, no cluster
needed) and the live ``kubernetes`` sink, sharing one pure renderer.

* :mod:`.plugin` -- the entry point; :mod:`.checks` -- the kubeconfig check.
* :mod:`.naming` -- Kubernetes names for desired services (the rules, the book).
* :mod:`.render` -- desired service -> Service and EndpointSlices (pure);
  :mod:`.validate` -- what the API server would refuse.
* :mod:`.compare` -- live objects read back into the model, and ``differs``.
* :mod:`.manifests` -- the ``manifests`` sink.
* The live sink: :mod:`.sink` (wiring, start-up, leadership), :mod:`.config`,
  :mod:`.view` (``key -> Observed`` over the informer stores), :mod:`.writer`
  (the API writes), :mod:`.handover` (managedFields after a create),
  :mod:`.report` (errors, Events, name conflicts), :mod:`.leader` (Lease
  election), :mod:`.metrics`.
* Client, informer and ownership come from :mod:`consul_sync_kube`.
"""
